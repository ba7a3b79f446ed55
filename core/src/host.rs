//! The host side of the step API: the `arkline:step` WIT packages this build serves.
//!
//! Each supported API version has its own module of bindings generated from its own
//! WIT directory (`wit/since_vX.Y.Z/`), in the style of Zed's extension host: a new
//! API version adds a module and leaves the older ones serving the components that
//! were built against them.
//!
//! The capabilities a biz requests and an engine grants ([`Capabilities`], the
//! grant syntax of [`parse_grant`]) are defined here, with the host functions
//! that serve them. This layer knows engines only as names, and nothing of
//! archives, pipelines or stores.

use semver::Version;

pub mod cache;
pub mod capability;
mod grant;
pub mod http;
pub mod process;
pub mod since_v0_1_0;
mod state;
pub mod step_log;
pub mod terminal;

pub use cache::BlobCache;
pub use capability::{CallerIdentity, Capabilities, Capability, EffectiveCapabilities};
pub use grant::{GrantError, merge_grants, parse_grant, parse_grants};
pub use process::{ProcessLimits, ProcessPolicy};
pub use state::{CallResources, PROVENANCE_CALL, ProvenanceFn, StepLimiter, StepState};
pub use step_log::{LogLevel, LogLine, LogMask, LogSink, LogSource, StepLog};

/// The WIT package every step plugin targets.
pub const PACKAGE: &str = "arkline:step";

/// The interface a step plugin exports.
pub const PLUGIN_INTERFACE: &str = "plugin";

/// Versions of the `arkline:step` API this host serves, oldest first.
pub fn supported_api_versions() -> Vec<Version> {
    vec![since_v0_1_0::VERSION]
}

/// The newest API version this host serves.
pub fn latest_api_version() -> Version {
    since_v0_1_0::VERSION
}

/// Parses an `arkline:step/<interface>@<version>` name into interface and version.
pub fn parse_interface_name(name: &str) -> Option<(&str, Version)> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    let (interface, version) = rest.split_once('@')?;
    Some((interface, Version::parse(version).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versioned_interface_names() {
        let (iface, v) = parse_interface_name("arkline:step/plugin@0.1.0").expect("parses");
        assert_eq!(iface, "plugin");
        assert_eq!(v, Version::new(0, 1, 0));
        assert!(parse_interface_name("arkline:step/plugin").is_none());
        assert!(parse_interface_name("wasi:cli/run@0.2.0").is_none());
        assert!(parse_interface_name("arkline:stepx/plugin@0.1.0").is_none());
    }
}
