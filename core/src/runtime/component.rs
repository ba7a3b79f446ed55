//! Checking that a component is a step plugin, and asking it what it implements.

use std::sync::mpsc;
use std::time::Duration;

use semver::Version;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::host::{self, since_v0_1_0};

/// Fuel for a `describe()` call: generous for building a few JSON schemas, small
/// enough that a guest looping at package time stops quickly.
const DESCRIBE_FUEL: u64 = 2_000_000_000;

/// Wall-clock limit for a `describe()` call.
const DESCRIBE_DEADLINE: Duration = Duration::from_secs(10);

/// Why a component is not a usable step plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly binary (no `\\0asm` header)")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "this is a core WebAssembly module, not a component; build for the `wasm32-wasip2` target (`cargo ark build` does)"
    )]
    CoreModule,
    /// wasmtime could not compile it.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// No `arkline:step/plugin` export.
    #[error(
        "the component does not export the step world: it has no `arkline:step/plugin@<version>` export (its exports: {exports}); register step functions with `arkline_sdk::steps!` (Rust), or build the component against the `step` world of arkline's WIT (`wit/since_v0.1.0`)"
    )]
    NotAStepPlugin {
        /// The exports it does have.
        exports: String,
    },
    /// An API version this host does not serve.
    #[error(
        "the component targets arkline:step@{found}, which this host does not serve (it serves {supported}); rebuild it against a supported arkline-sdk or upgrade arkline"
    )]
    UnsupportedApi {
        /// The version the component targets.
        found: Version,
        /// Versions this host serves.
        supported: String,
    },
    /// Its imports cannot be satisfied by this host.
    #[error(
        "the component imports something this host does not provide: {0}; step plugins may import only WASI 0.2 and the `arkline:step` interfaces"
    )]
    Link(String),
    /// Instantiating or calling `describe()` failed.
    #[error("calling describe() failed: {0}")]
    Describe(String),
    /// `describe()` returned something invalid.
    #[error("describe() returned an invalid step list: {0}")]
    InvalidDescription(String),
}

/// A step type as the component describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DescribedStep {
    /// Step type id.
    pub id: String,
    /// One-line description.
    pub description: String,
    /// JSON Schema of its config; `Null` when the component does not carry
    /// it (`describe()` reported an empty string: `cargo ark` ships components
    /// without their schemas and keeps them in the `.ark`).
    pub config_schema: serde_json::Value,
}

/// What a step plugin component is and does.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentInfo {
    /// The `arkline:step` API version it targets.
    pub api_version: Version,
    /// Its step types.
    pub steps: Vec<DescribedStep>,
    /// Names of the instances it imports (WASI and `arkline:step` interfaces).
    pub imports: Vec<String>,
}

/// An engine suitable for [`describe_component`]: fuel metering and epoch
/// interruption on, so a misbehaving `describe()` is stopped.
pub fn describe_engine() -> Result<Engine, ComponentError> {
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    Engine::new(&config).map_err(|e| ComponentError::Compile(e.to_string()))
}

/// Checks `wasm` is a step plugin component and calls its `describe()`, with a fresh
/// engine. See [`describe_component`].
pub fn inspect_component(wasm: &[u8]) -> Result<ComponentInfo, ComponentError> {
    describe_component(&describe_engine()?, wasm)
}

/// Checks `wasm` is a component exporting a step world this host serves and
/// importing nothing the host lacks ([`ComponentError::Link`]), then
/// instantiates it (WASI with nothing granted: no files, no environment; every
/// other import a trap) and calls `describe()` under a fuel cap and a deadline.
///
/// `engine` must have fuel metering and epoch interruption enabled
/// ([`describe_engine`] makes one).
pub fn describe_component(engine: &Engine, wasm: &[u8]) -> Result<ComponentInfo, ComponentError> {
    check_header(wasm)?;
    let component =
        Component::new(engine, wasm).map_err(|e| ComponentError::Compile(format!("{e:#}")))?;
    let imports: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let api_version = step_api_version(engine, &component)?;
    check_imports(engine, &component)?;

    let steps = call_describe(engine, &component)?;
    check_steps(&steps)?;
    Ok(ComponentInfo {
        api_version,
        steps,
        imports,
    })
}

/// The `arkline:step` version whose `plugin` interface `component` exports,
/// refused when this host does not serve it.
pub(crate) fn step_api_version(
    engine: &Engine,
    component: &Component,
) -> Result<Version, ComponentError> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let api_version = exports
        .iter()
        .filter_map(|name| host::parse_interface_name(name))
        .find(|(iface, _)| *iface == host::PLUGIN_INTERFACE)
        .map(|(_, v)| v)
        .ok_or_else(|| ComponentError::NotAStepPlugin {
            exports: if exports.is_empty() {
                "none".to_owned()
            } else {
                exports.join(", ")
            },
        })?;
    if !host::supported_api_versions().contains(&api_version) {
        return Err(ComponentError::UnsupportedApi {
            found: api_version,
            supported: host::supported_api_versions()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(api_version)
}

/// Refuses a component importing anything the step host does not provide: a
/// link against the host's real linker (WASI 0.2 and every `arkline:step`
/// interface it serves), without instantiating. `describe()` itself runs with
/// unknown imports as traps, so without this a component importing, say,
/// `acme:db/query` would package fine and only be refused at install.
fn check_imports(engine: &Engine, component: &Component) -> Result<(), ComponentError> {
    let link_err = |e: wasmtime::Error| ComponentError::Link(format!("{e:#}"));
    let mut linker = Linker::<host::StepState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_err)?;
    since_v0_1_0::add_to_linker(&mut linker).map_err(link_err)?;
    linker.instantiate_pre(component).map_err(link_err)?;
    Ok(())
}

pub(crate) fn check_header(wasm: &[u8]) -> Result<(), ComponentError> {
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(ComponentError::CoreModule),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        _ => Err(ComponentError::NotWasm),
    }
}

/// Memory a component may use during `describe()`.
const DESCRIBE_MEMORY: usize = 256 << 20;

struct DescribeState {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: wasmtime::StoreLimits,
}

impl WasiView for DescribeState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Defines every import that is not WASI as a trap (`describe()` runs with
/// no capability). Not `Linker::define_unknown_imports_as_traps`: it defines
/// an instance under the import's exact name, so an import of a newer WASI
/// 0.2 patch version (`wasi:cli/environment@0.2.9`, from componentize-py)
/// would get traps where the linker's WASI 0.2 would have served it by
/// semver.
fn stub_capabilities(
    engine: &Engine,
    linker: &mut Linker<DescribeState>,
    component: &Component,
) -> wasmtime::Result<()> {
    use wasmtime::component::types::ComponentItem;
    for (name, item) in component.component_type().imports(engine) {
        if name.starts_with("wasi:") {
            continue;
        }
        match item.ty {
            ComponentItem::ComponentInstance(instance) => {
                let mut stubs = linker.instance(name)?;
                for (export, item) in instance.exports(engine) {
                    match item.ty {
                        ComponentItem::ComponentFunc(_) => {
                            let what = format!("{name}#{export}");
                            stubs.func_new(export, move |_, _, _, _| {
                                Err(wasmtime::format_err!(
                                    "`{what}` called from describe(), which runs with no capability"
                                ))
                            })?;
                        }
                        ComponentItem::Resource(_) => {
                            stubs.resource(
                                export,
                                wasmtime::component::ResourceType::host::<()>(),
                                |_, _| Ok(()),
                            )?;
                        }
                        _ => {}
                    }
                }
            }
            ComponentItem::ComponentFunc(_) => {
                let what = name.to_owned();
                linker.root().func_new(name, move |_, _, _, _| {
                    Err(wasmtime::format_err!(
                        "`{what}` called from describe(), which runs with no capability"
                    ))
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn call_describe(
    engine: &Engine,
    component: &Component,
) -> Result<Vec<DescribedStep>, ComponentError> {
    let describe_err = |e: wasmtime::Error| ComponentError::Describe(format!("{e:#}"));
    let mut linker = Linker::<DescribeState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(describe_err)?;
    stub_capabilities(engine, &mut linker, component).map_err(describe_err)?;
    let mut store = Store::new(
        engine,
        DescribeState {
            ctx: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(DESCRIBE_MEMORY)
                .instances(64)
                .tables(64)
                .build(),
        },
    );
    store.limiter(|state| &mut state.limits);
    store.set_fuel(DESCRIBE_FUEL).map_err(describe_err)?;
    store.set_epoch_deadline(1);

    // A watchdog bumps the epoch once the deadline passes; finishing first stops it.
    let (done, finished) = mpsc::channel::<()>();
    let watchdog_engine = engine.clone();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(DESCRIBE_DEADLINE) == Err(mpsc::RecvTimeoutError::Timeout) {
            watchdog_engine.increment_epoch();
        }
    });

    // On a thread of its own with its own runtime, so this works the same from
    // plain code and from inside an async runtime (where blocking would panic).
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .map_err(|e| ComponentError::Describe(e.to_string()))?;
                runtime
                    .block_on(async {
                        let instance =
                            since_v0_1_0::Step::instantiate_async(&mut store, component, &linker)
                                .await?;
                        instance
                            .arkline_step_plugin()
                            .call_describe(&mut store)
                            .await
                    })
                    .map_err(describe_err)
            })
            .join()
            .unwrap_or_else(|_| Err(ComponentError::Describe("describe() panicked".into())))
    });
    let _ = done.send(());
    let _ = watchdog.join();

    let described = result?;
    described
        .into_iter()
        .map(|s| {
            // Empty: the component does not carry its schemas (the SDK built
            // without `schema`); the `.ark` has them.
            let config_schema = if s.config_schema.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&s.config_schema).map_err(|e| {
                    ComponentError::InvalidDescription(format!(
                        "the config schema of step type `{}` is not JSON: {e}",
                        s.id
                    ))
                })?
            };
            Ok(DescribedStep {
                id: s.id,
                description: s.description,
                config_schema,
            })
        })
        .collect()
}

fn check_steps(steps: &[DescribedStep]) -> Result<(), ComponentError> {
    if steps.is_empty() {
        return Err(ComponentError::InvalidDescription(
            "it lists no step types".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for step in steps {
        if !crate::ark::is_valid_name(&step.id) {
            return Err(ComponentError::InvalidDescription(format!(
                "step type id `{}` must be 1-64 lower-case letters, digits, `-` or `_`, starting with a letter",
                step.id
            )));
        }
        if !seen.insert(step.id.as_str()) {
            return Err(ComponentError::InvalidDescription(format!(
                "step type `{}` is listed twice",
                step.id
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(ComponentError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(ComponentError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
