//! Native plugins: trusted host extensions loaded from shared libraries.
//!
//! A native plugin is a shared library (`.so`, `.dylib`, `.dll`) that serves named
//! calls, *handlers*, over byte buffers. Steps reach them through the `host-call`
//! capability (`call: func(name, payload) -> result<list<u8>, host-error>`), which
//! an engine grants per handler name. It is SOFAArk's Ark Plugin: code that
//! extends the host rather than running in it as a guest.
//!
//! # Trust: native plugins are not isolated
//!
//! **A native plugin is trusted code.** It runs inside the host process, with the
//! host's memory, files, network and privileges; none of the isolation a biz gets
//! from WebAssembly applies to it. A crash, a wild pointer, an endless loop, a
//! deadlock or a call to `exit` in a plugin takes down or stalls the host and every
//! engine in it. The host checks what the ABI lets it check (the ABI version, the
//! shape of the table, handler status codes, reply sizes) and turns panics that the
//! plugin catches into [`NativeCallError::Panicked`], nothing more. Load only
//! libraries you would link into the host yourself.
//!
//! # Using native plugins
//!
//! ```no_run
//! use arkline::native::{NativeCallError, NativePlugins};
//! use std::path::Path;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let plugins = NativePlugins::new();
//! let info = plugins.load(Path::new("target/debug/libnative_kv.so"))?;
//! println!("{} {} serves {:?}", info.name, info.version, info.handlers);
//!
//! plugins.call("kv.put", br#"{"key": "greeting", "value": "hi"}"#)?;
//! let reply = plugins.call("kv.get", br#"{"key": "greeting"}"#)?;
//! assert_eq!(reply, br#"{"found":true,"value":"hi"}"#);
//!
//! match plugins.call("kv.nope", b"") {
//!     Err(NativeCallError::UnknownHandler(name)) => assert_eq!(name, "kv.nope"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! [`NativePlugins`] is the process's registry, handler name → plugin; it is cheap
//! to clone and shared between threads. Handler names are unique across the
//! plugins loaded into one registry.
//!
//! **Calls block.** A handler is a synchronous C function and
//! [`NativePlugins::call`] runs it on the calling thread. From async code call it
//! through `tokio::task::spawn_blocking`; plugins should keep handlers short, and
//! hand long work to threads of their own.
//!
//! **Libraries are never unloaded.** A loaded library stays mapped until the
//! process exits (the `Library` is leaked; there is no `dlclose`), also when
//! loading it fails after it was opened, e.g. on an incompatible ABI version or a
//! duplicate handler. Loading the same file again maps nothing new: the dynamic
//! loader hands back the same library, and its plugin state is shared.
//!
//! # The C ABI, version 1.0.0
//!
//! [`ABI_VERSION`] is the ABI this host implements. In C:
//!
//! ```c
//! #include <stddef.h>
//! #include <stdint.h>
//!
//! #define ARKLINE_NATIVE_OK       0  /* out holds the reply */
//! #define ARKLINE_NATIVE_ERROR    1  /* out holds a UTF-8 error message */
//! #define ARKLINE_NATIVE_PANICKED 2  /* the handler panicked; out holds a UTF-8 message */
//!
//! typedef struct ArklineBuf {
//!     uint8_t *ptr;  /* NULL: empty, nothing to free */
//!     size_t len;
//!     size_t cap;    /* private to the plugin; the host passes it back unchanged */
//! } ArklineBuf;
//!
//! typedef int32_t (*ArklineHandlerFn)(void *user_data, const uint8_t *in_ptr,
//!                                     size_t in_len, ArklineBuf *out);
//!
//! typedef struct ArklineHandler {
//!     const uint8_t *name_ptr;  /* UTF-8, not NUL-terminated */
//!     size_t name_len;
//!     ArklineHandlerFn call;    /* not NULL */
//!     void *user_data;          /* passed to call unchanged */
//! } ArklineHandler;
//!
//! typedef struct ArklineNativeTable {
//!     const uint8_t *name_ptr;     /* plugin name, UTF-8, not NUL-terminated */
//!     size_t name_len;
//!     const uint8_t *version_ptr;  /* plugin version, semver, UTF-8 */
//!     size_t version_len;
//!     size_t handler_count;
//!     const ArklineHandler *handlers;
//!     void (*free_buf)(ArklineBuf buf);  /* not NULL */
//! } ArklineNativeTable;
//!
//! /* The ABI version the plugin was built for, e.g. "1.0.0". */
//! extern const char ARKLINE_NATIVE_ABI[];
//! const ArklineNativeTable *arkline_native_entry(void);
//! ```
//!
//! The same types in Rust are in [`abi`]; the example plugin `plugins/native-kv`
//! implements the plugin side, panic catching included, in its `abi` module.
//!
//! ## Loading
//!
//! [`NativePlugins::load`] goes through these steps in order; each failure is a
//! distinct [`NativeError`]:
//!
//! 1. The path is made absolute (a bare file name would make the loader search
//!    the library path) and opened with `RTLD_NOW | RTLD_LOCAL`: undefined
//!    symbols fail the load instead of killing the process on a later call.
//! 2. `ARKLINE_NATIVE_ABI` is looked up. A library without it is not an arkline
//!    native plugin. It is read as a NUL-terminated string of at most 64 bytes and
//!    parsed as a semver version, then checked **before any other symbol is looked
//!    up**: a plugin built for ABI `P` loads when this host's ABI matches `^P`
//!    (same major version, host not older). A 1.0.0 host refuses plugins built
//!    for 2.0.0, and for 1.1.0, which may rely on what 1.1 adds.
//! 3. `arkline_native_entry` is called once per load. It returns the table, or
//!    NULL if the plugin cannot initialise. It may return the same table on every
//!    call; the table, its strings and its handlers must stay valid and unchanged
//!    until the process exits.
//! 4. The table is checked: a non-empty plugin name of at most 128 bytes without
//!    control characters; a semver version; at most 1024 handlers; handler names
//!    of 1–128 ASCII letters, digits, `.`, `-` or `_` starting with a letter
//!    ([`is_valid_handler_name`]), unique within the plugin and across the
//!    registry; non-NULL `call` and `free_buf`.
//!
//! ## Calling
//!
//! The host passes the request in `in_ptr`/`in_len` (valid only during the call;
//! when `in_len` is 0 `in_ptr` may be NULL or dangling and must not be read) and
//! `out` set to `{NULL, 0, 0}`. The handler writes a buffer of its own to `*out`
//! and returns a status. The host copies the buffer and, if `ptr` is not NULL,
//! passes it to `free_buf` exactly once, whatever the status. Messages for
//! `ERROR` and `PANICKED` are UTF-8 (invalid bytes are replaced) and cut at
//! 4 KiB. Any other status is a [`NativeCallError::Protocol`] error.
//!
//! Handlers must
//! - be callable from any thread, also concurrently (the host calls them from a
//!   pool of blocking threads, one call per step);
//! - never unwind: a panic unwinding out of an `extern "C"` function aborts the
//!   process. Rust plugins wrap each handler in `std::panic::catch_unwind`, build
//!   with `panic = "unwind"`, and report the panic with `ARKLINE_NATIVE_PANICKED`;
//! - return promptly: the host cannot interrupt a handler, and a step's timeout
//!   does not stop it.
//!
//! ## Versioning
//!
//! The major version changes whenever a table built for the old ABI would be
//! misread by a new host. A minor version may add to the end of
//! `ArklineNativeTable` or define new status codes a plugin may return; hosts of
//! the same major and at least that minor version understand them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use semver::Version;

pub mod abi;
mod plugin;

/// The native plugin ABI version this host implements. Plugins declare the
/// version they were built for in `ARKLINE_NATIVE_ABI`; see the
/// [module docs](self) for the rule.
pub const ABI_VERSION: &str = "1.0.0";

/// [`ABI_VERSION`] as a version.
const HOST_ABI: Version = Version::new(1, 0, 0);

/// Whether a plugin built for native plugin ABI `plugin` can be loaded by this
/// host: the host's [`ABI_VERSION`] matches `^plugin`.
///
/// ```
/// use semver::Version;
/// assert!(arkline::native::abi_compatible(&Version::new(1, 0, 0)));
/// assert!(!arkline::native::abi_compatible(&Version::new(2, 0, 0)));
/// ```
pub fn abi_compatible(plugin: &Version) -> bool {
    plugin::compatible(plugin)
}

/// Whether `name` is a valid handler name: 1–128 ASCII letters, digits, `.`,
/// `-` or `_`, starting with a letter (so `kv.get`, never `*` or `a,b`, which
/// mean something in `host-call` grants).
pub fn is_valid_handler_name(name: &str) -> bool {
    name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Size limits applied to every native call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NativeLimits {
    /// The largest request payload passed to a handler (default 16 MiB).
    pub max_request_bytes: usize,
    /// The largest reply accepted from a handler (default 16 MiB); a larger
    /// reply is freed unread and the call fails with [`NativeCallError::TooLarge`].
    pub max_reply_bytes: usize,
}

impl Default for NativeLimits {
    fn default() -> Self {
        NativeLimits {
            max_request_bytes: 16 << 20,
            max_reply_bytes: 16 << 20,
        }
    }
}

impl NativeLimits {
    /// Sets [`max_request_bytes`](Self::max_request_bytes).
    #[must_use]
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// Sets [`max_reply_bytes`](Self::max_reply_bytes).
    #[must_use]
    pub fn max_reply_bytes(mut self, bytes: usize) -> Self {
        self.max_reply_bytes = bytes;
        self
    }
}

/// What a loaded native plugin is and serves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NativePluginInfo {
    /// The plugin's name, from its table.
    pub name: String,
    /// The plugin's version, from its table.
    pub version: Version,
    /// The ABI version the plugin was built for (`ARKLINE_NATIVE_ABI`).
    pub abi: Version,
    /// The library's absolute path.
    pub path: PathBuf,
    /// The handler names, in the order of the plugin's table.
    pub handlers: Vec<String>,
}

/// A loaded native plugin, not (yet) registered. Cheap to clone.
///
/// [`NativePlugin::open`] loads and checks a library without making its handlers
/// callable, e.g. to inspect it; [`NativePlugins::insert`] registers it.
#[derive(Clone)]
pub struct NativePlugin {
    loaded: Arc<plugin::Loaded>,
}

impl NativePlugin {
    /// Loads the library at `path` and checks its ABI version and table; see
    /// [Loading](self#loading). The library stays loaded until the process exits,
    /// whatever the outcome.
    pub fn open(path: &Path) -> Result<Self, NativeError> {
        let loaded = plugin::open(path)?;
        Ok(NativePlugin {
            loaded: Arc::new(loaded),
        })
    }

    /// The plugin's name, version, ABI version, path and handlers.
    pub fn info(&self) -> &NativePluginInfo {
        &self.loaded.info
    }
}

impl fmt::Debug for NativePlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NativePlugin").field(self.info()).finish()
    }
}

/// The registry of native plugins: handler name → plugin.
///
/// Cheap to clone (an `Arc`); clones share the registry. `Send + Sync`: loading and
/// calling may happen on any threads, and a long call does not hold up a load.
#[derive(Clone, Default)]
pub struct NativePlugins {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    limits: NativeLimits,
    registry: RwLock<Registry>,
}

#[derive(Default)]
struct Registry {
    plugins: Vec<NativePlugin>,
    /// Handler name → (plugin, index into its handlers).
    handlers: BTreeMap<String, (NativePlugin, usize)>,
}

impl NativePlugins {
    /// An empty registry with the default [`NativeLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry applying `limits` to every call.
    pub fn with_limits(limits: NativeLimits) -> Self {
        NativePlugins {
            shared: Arc::new(Shared {
                limits,
                registry: RwLock::default(),
            }),
        }
    }

    /// The limits applied to every call.
    pub fn limits(&self) -> NativeLimits {
        self.shared.limits
    }

    /// Loads the native plugin at `path` ([`NativePlugin::open`]) and registers its
    /// handlers ([`insert`](Self::insert)).
    pub fn load(&self, path: &Path) -> Result<NativePluginInfo, NativeError> {
        self.insert(NativePlugin::open(path)?)
    }

    /// Registers the handlers of `plugin`. Fails, registering none of them, when
    /// one of its handler names is already registered.
    pub fn insert(&self, plugin: NativePlugin) -> Result<NativePluginInfo, NativeError> {
        let info = plugin.info().clone();
        let mut registry = self
            .shared
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for handler in &info.handlers {
            if let Some((existing, _)) = registry.handlers.get(handler) {
                let existing = existing.info();
                return Err(NativeError::DuplicateHandler {
                    handler: handler.clone(),
                    plugin: info.name.clone(),
                    path: info.path.clone(),
                    existing_plugin: existing.name.clone(),
                    existing_path: existing.path.clone(),
                });
            }
        }
        for (index, handler) in info.handlers.iter().enumerate() {
            registry
                .handlers
                .insert(handler.clone(), (plugin.clone(), index));
        }
        registry.plugins.push(plugin);
        drop(registry);
        tracing::info!(
            plugin = %info.name,
            version = %info.version,
            abi = %info.abi,
            path = %info.path.display(),
            handlers = ?info.handlers,
            "loaded native plugin"
        );
        Ok(info)
    }

    /// Every registered handler name, sorted.
    pub fn handlers(&self) -> Vec<String> {
        self.read().handlers.keys().cloned().collect()
    }

    /// The registered plugins, in the order they were loaded.
    pub fn plugins(&self) -> Vec<NativePluginInfo> {
        self.read()
            .plugins
            .iter()
            .map(|p| p.info().clone())
            .collect()
    }

    /// Calls the handler registered as `name` with `payload` and returns its reply.
    ///
    /// Blocks the calling thread for as long as the handler runs (see
    /// [Calling](self#calling)); from async code use `spawn_blocking`.
    pub fn call(&self, name: &str, payload: &[u8]) -> Result<Vec<u8>, NativeCallError> {
        let (plugin, index) = self
            .read()
            .handlers
            .get(name)
            .cloned()
            .ok_or_else(|| NativeCallError::UnknownHandler(name.to_owned()))?;
        let limits = self.shared.limits;
        if payload.len() > limits.max_request_bytes {
            return Err(NativeCallError::TooLarge {
                handler: name.to_owned(),
                what: PayloadKind::Request,
                len: payload.len(),
                limit: limits.max_request_bytes,
            });
        }
        let _span =
            tracing::debug_span!("native_call", handler = name, plugin = %plugin.info().name)
                .entered();
        let result = plugin.loaded.call(index, name, payload, &limits);
        match &result {
            Err(e @ NativeCallError::Panicked { .. }) => tracing::warn!("{e}"),
            Err(e @ NativeCallError::Protocol { .. }) => tracing::error!("{e}"),
            _ => {}
        }
        result
    }

    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.shared
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for NativePlugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativePlugins")
            .field("limits", &self.shared.limits)
            .field("plugins", &self.read().plugins)
            .finish()
    }
}

/// Why a native plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NativeError {
    /// The path does not exist or cannot be resolved.
    #[error("cannot open native plugin {}: {error}", path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
        /// Why it cannot be resolved.
        error: std::io::Error,
    },
    /// The dynamic loader refused the file.
    #[error("{} is not a loadable shared library: {reason}", path.display())]
    NotALibrary {
        /// The library's absolute path.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library does not export `ARKLINE_NATIVE_ABI`.
    #[error(
        "{} is not an arkline native plugin: it does not export the `ARKLINE_NATIVE_ABI` symbol declaring the native plugin ABI version it was built for",
        path.display()
    )]
    NotAPlugin {
        /// The library's absolute path.
        path: PathBuf,
    },
    /// `ARKLINE_NATIVE_ABI` is not a semver version.
    #[error(
        "native plugin {} declares ABI version `{}`, which is not {reason}",
        path.display(),
        found.escape_debug()
    )]
    InvalidAbiVersion {
        /// The library's absolute path.
        path: PathBuf,
        /// What the symbol holds (lossily decoded).
        found: String,
        /// What it should be.
        reason: String,
    },
    /// The plugin was built for an ABI this host does not implement.
    #[error(
        "native plugin {} was built for ABI {plugin}, but this host implements ABI {host}: rebuild the plugin against ABI {host}, or load it into a host whose ABI matches ^{plugin}",
        path.display()
    )]
    IncompatibleAbi {
        /// The library's absolute path.
        path: PathBuf,
        /// The ABI version the plugin declares.
        plugin: Version,
        /// The ABI version this host implements ([`ABI_VERSION`]).
        host: Version,
    },
    /// The library declares an ABI version but has no entry function.
    #[error(
        "native plugin {} declares ABI {abi} but does not export the entry function `arkline_native_entry`",
        path.display()
    )]
    MissingEntry {
        /// The library's absolute path.
        path: PathBuf,
        /// The ABI version it declares.
        abi: Version,
    },
    /// The entry function returned NULL.
    #[error(
        "`arkline_native_entry` of native plugin {} returned a null table: the plugin failed to initialise",
        path.display()
    )]
    NullTable {
        /// The library's absolute path.
        path: PathBuf,
    },
    /// The table breaks the ABI's rules.
    #[error("native plugin {} has an invalid handler table: {reason}", path.display())]
    InvalidTable {
        /// The library's absolute path.
        path: PathBuf,
        /// Which rule it breaks.
        reason: String,
    },
    /// A handler name is already registered by a loaded plugin.
    #[error(
        "handler `{handler}` of native plugin `{plugin}` ({}) is already registered by native plugin `{existing_plugin}` ({}); handler names must be unique across loaded native plugins",
        path.display(),
        existing_path.display()
    )]
    DuplicateHandler {
        /// The handler name.
        handler: String,
        /// The plugin being registered.
        plugin: String,
        /// Its library.
        path: PathBuf,
        /// The plugin that registered the name first.
        existing_plugin: String,
        /// Its library.
        existing_path: PathBuf,
    },
}

/// Which payload of a call is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// The request passed to the handler.
    Request,
    /// The reply the handler returned.
    Reply,
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PayloadKind::Request => "request",
            PayloadKind::Reply => "reply",
        })
    }
}

/// Why a native call failed. The host and the plugin stay usable after each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NativeCallError {
    /// No loaded plugin registers a handler of this name.
    #[error("no loaded native plugin serves the handler `{0}`")]
    UnknownHandler(String),
    /// The handler returned an error.
    #[error("native handler `{handler}` failed: {message}")]
    Failed {
        /// The handler name.
        handler: String,
        /// The plugin's message.
        message: String,
    },
    /// The handler panicked; the plugin caught the panic.
    #[error("native handler `{handler}` panicked: {message}")]
    Panicked {
        /// The handler name.
        handler: String,
        /// The panic message.
        message: String,
    },
    /// The request or the reply is larger than [`NativeLimits`] allow.
    #[error("the {what} of native handler `{handler}` is {len} bytes, over the limit of {limit}")]
    TooLarge {
        /// The handler name.
        handler: String,
        /// Request or reply.
        what: PayloadKind,
        /// Its size in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The handler broke the ABI (an unknown status, a null buffer with a length).
    #[error("native handler `{handler}` broke the native plugin ABI: {reason}")]
    Protocol {
        /// The handler name.
        handler: String,
        /// What it did.
        reason: String,
    },
}

#[cfg(test)]
mod tests;
