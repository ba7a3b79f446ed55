//! # arkline
//!
//! An embeddable pipeline-and-reconcile engine whose pipeline steps are isolated
//! WebAssembly components ("biz" modules). This crate is the library: the archive
//! format of step plugins ([`ark`]) and the host side of the step API ([`host`]).
//!
//! Step plugins are written with `arkline-sdk` and packaged by `cargo ark package`
//! into `.ark` archives, which this crate reads and verifies:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ark = arkline::ark::Ark::open("target/ark/shell-0.1.0.ark")?;
//! println!("{} {} serves {} step type(s)", ark.manifest.name, ark.manifest.version,
//!     ark.manifest.steps.len());
//! let info = arkline::ark::inspect_component(&ark.component)?;
//! assert_eq!(info.steps.len(), ark.manifest.steps.len());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod ark;
pub mod host;

pub use ark::{Ark, ArchiveError, ComponentError, Manifest};
