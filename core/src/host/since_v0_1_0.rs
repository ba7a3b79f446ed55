//! Bindings for `arkline:step@0.1.0`, generated from `wit/since_v0.1.0`.

use semver::Version;

/// The API version these bindings serve.
pub const VERSION: Version = Version::new(0, 1, 0);

// The generated items carry the WIT documentation where the WIT has it; the
// generated glue (add_to_linker, instantiate helpers) has none.
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "step",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use bindings::*;
