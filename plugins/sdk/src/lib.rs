//! # arkline-sdk: write arkline step plugins in Rust
//!
//! A step plugin (a *biz*) is a WebAssembly component that implements one or more
//! step types. You write one plain function per step type, taking a serde config
//! struct, and register them all with [`steps!`]. The SDK decodes each step's JSON
//! `with` configuration into your struct (a clear `invalid-config` error names the
//! field and the expected type when it does not fit), derives the JSON Schema that
//! `describe()` reports from the same type, and wraps the host's capability
//! interfaces in typed Rust APIs: [`log`](mod@log), [`process`], [`http`], [`cache`] and
//! [`host_call`].
//!
//! ```no_run
//! use arkline_sdk::prelude::*;
//!
//! /// Configuration of the `greet` step.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Greet {
//!     /// Who to greet.
//!     name: String,
//!     /// How many times.
//!     #[serde(default = "one")]
//!     times: u32,
//! }
//!
//! fn one() -> u32 {
//!     1
//! }
//!
//! fn greet(ctx: &Context, config: Greet) -> StepResult {
//!     arkline_sdk::info!("greeting {} in {}", config.name, ctx.pipeline);
//!     let line = format!("hello, {}!", config.name).repeat(config.times as usize);
//!     let out = process::Command::new("sh").arg("-c").arg("echo done").output()?;
//!     if !out.status.success() {
//!         return Err(StepError::failed(format!("sh ended with {}", out.status)));
//!     }
//!     Ok(Outcome::new().output("greeting", line))
//! }
//!
//! arkline_sdk::steps! {
//!     /// Greets someone.
//!     "greet" => greet,
//! }
//! # fn main() {}
//! ```
//!
//! Build and package it with `cargo ark package`; try one step with `cargo ark run`.
//! The crate must be a `cdylib` with a `[package.metadata.ark]` table; `cargo ark new`
//! scaffolds one.

#![deny(missing_docs)]

// Lets the generated bindings use the same `::arkline_sdk::…` paths inside this crate
// as in the plugins that expand `steps!`.
extern crate self as arkline_sdk;

pub mod cache;
mod config;
mod context;
mod float;
pub mod host_call;
pub mod http;
mod json;
pub mod log;
pub mod process;
pub mod workspace;

pub use config::{config_schema, decode_config, schema_json};
pub use context::{Context, HostError, Outcome, StepError, StepResult};

/// The bindings generated from the host API (`arkline:step@0.1.0`). Step authors do
/// not need them: the typed modules of this crate wrap every import.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "step",
        // `plugins/sdk/wit` links to the workspace's `wit/`, so the packaged crate has it.
        path: "wit/since_v0.1.0",
        pub_export_macro: true,
        export_macro_name: "__export_step_world",
        default_bindings_module: "::arkline_sdk::bindings",
        runtime_path: "::arkline_sdk::__private::wit_bindgen::rt",
    });
}

/// The version of the host API this SDK targets.
pub const HOST_API_VERSION: &str = "0.1.0";

/// What step implementations usually need, in one import.
pub mod prelude {
    pub use crate::{
        Context, HostError, Outcome, StepError, StepResult, cache, host_call, http, log, process,
    };
    pub use schemars::JsonSchema;
    pub use serde::Deserialize;
}

/// Re-exports used by the code [`steps!`] expands to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use schemars;
    pub use serde;
    pub use wit_bindgen;

    use crate::bindings::exports::arkline::step::plugin as wit;

    /// Describes one step type from its function's config type.
    pub fn describe<C, F>(id: &str, description: &str, _f: &F) -> wit::StepType
    where
        C: schemars::JsonSchema,
        F: Fn(&crate::Context, C) -> crate::StepResult,
    {
        wit::StepType {
            id: id.to_owned(),
            description: description.to_owned(),
            config_schema: crate::config_schema::<C>(),
        }
    }

    /// Decodes the config and runs one step function.
    pub fn dispatch<C, F>(
        f: F,
        context: wit::Context,
        config: &str,
    ) -> Result<wit::Outcome, wit::StepError>
    where
        C: serde::de::DeserializeOwned,
        F: Fn(&crate::Context, C) -> crate::StepResult,
    {
        let context = crate::Context::from(context);
        let config = crate::decode_config::<C>(config).map_err(wit::StepError::from)?;
        f(&context, config)
            .map(wit::Outcome::from)
            .map_err(wit::StepError::from)
    }

    /// Joins doc-comment lines into a one-line description.
    pub fn description(lines: &[&str]) -> String {
        lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Registers the step types of this biz and exports the step world.
///
/// Each entry is an optional doc comment (the step type's description), the step type
/// id as a string literal, `=>`, and a function `fn(&Context, C) -> StepResult` whose
/// config type `C` implements `Deserialize` and `JsonSchema`.
///
/// ```no_run
/// # use arkline_sdk::prelude::*;
/// # #[derive(Deserialize, JsonSchema)] struct A {}
/// # fn build(_: &Context, _: A) -> StepResult { Ok(Outcome::new()) }
/// # fn test(_: &Context, _: A) -> StepResult { Ok(Outcome::new()) }
/// arkline_sdk::steps! {
///     /// Builds the project.
///     "build" => build,
///     /// Runs its tests.
///     "test" => test,
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! steps {
    ($( $(#[doc = $doc:literal])* $id:literal => $func:path ),+ $(,)?) => {
        #[doc(hidden)]
        pub struct __ArklineSteps;

        impl $crate::bindings::exports::arkline::step::plugin::Guest for __ArklineSteps {
            fn describe() -> ::std::vec::Vec<$crate::bindings::exports::arkline::step::plugin::StepType> {
                ::std::vec![$(
                    $crate::__private::describe(
                        $id,
                        &$crate::__private::description(&[$($doc),*]),
                        &$func,
                    )
                ),+]
            }

            fn run(
                context: $crate::bindings::exports::arkline::step::plugin::Context,
                config: ::std::string::String,
            ) -> ::std::result::Result<
                $crate::bindings::exports::arkline::step::plugin::Outcome,
                $crate::bindings::exports::arkline::step::plugin::StepError,
            > {
                match context.step_type.as_str() {
                    $( $id => $crate::__private::dispatch($func, context, &config), )+
                    other => ::std::result::Result::Err(
                        $crate::bindings::exports::arkline::step::plugin::StepError::UnknownStepType(
                            ::std::format!(
                                "this biz has no step type `{}`; it has: {}",
                                other,
                                [$($id),+].join(", "),
                            ),
                        ),
                    ),
                }
            }
        }

        // Exported symbols carry WIT names (`arkline:step/plugin@0.1.0#run`) that only
        // a wasm linker accepts; on the host the impl still compiles for unit tests.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_step_world!(__ArklineSteps with_types_in $crate::bindings);
    };
}
