//! One native plugin: opening the library, checking its ABI, reading its table,
//! and calling its handlers across the C boundary.

use std::collections::HashSet;
use std::ffi::c_void;
use std::path::{Path, PathBuf};

use semver::{Comparator, Op, Version, VersionReq};

use super::abi::{
    ABI_SYMBOL, ArklineBuf, ArklineEntryFn, ArklineFreeBufFn, ArklineHandlerFn, ArklineNativeTable,
    ENTRY_SYMBOL, STATUS_ERROR, STATUS_OK, STATUS_PANICKED,
};
use super::{
    HOST_ABI, NativeCallError, NativeError, NativeLimits, NativePluginInfo, PayloadKind,
    is_valid_handler_name,
};

/// The longest ABI version string read from `ARKLINE_NATIVE_ABI`, NUL included.
/// Bounds the read of a symbol whose size the host cannot know.
const MAX_ABI_STRING: usize = 64;
/// The longest plugin name or version the table may hold.
const MAX_NAME_BYTES: usize = 128;
/// The most handlers one plugin may register; more means a corrupt table.
const MAX_HANDLERS: usize = 1024;
/// Error and panic messages are cut to this many bytes.
const MAX_MESSAGE_BYTES: usize = 4096;

/// A loaded, validated plugin.
pub(super) struct Loaded {
    pub(super) info: NativePluginInfo,
    /// In the order of `info.handlers`.
    handlers: Vec<Handler>,
    free_buf: ArklineFreeBufFn,
}

struct Handler {
    call: ArklineHandlerFn,
    user_data: *mut c_void,
}

// SAFETY: the ABI requires every handler to be callable from any thread, also
// concurrently, with its `user_data`, and the table to stay valid and unchanged
// for the life of the process (the library is never unloaded). The host only
// passes `user_data` back to the plugin, never dereferences it.
unsafe impl Send for Loaded {}
// SAFETY: as for `Send`; `Loaded` is immutable after `read_table`.
unsafe impl Sync for Loaded {}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Whether a plugin built for ABI `plugin` may be loaded by this host: the host's
/// ABI satisfies `^plugin` (same major version, and the host is not older).
pub(super) fn compatible(plugin: &Version) -> bool {
    let req = VersionReq {
        comparators: vec![Comparator {
            op: Op::Caret,
            major: plugin.major,
            minor: Some(plugin.minor),
            patch: Some(plugin.patch),
            pre: plugin.pre.clone(),
        }],
    };
    req.matches(&HOST_ABI)
}

/// Opens the library at `path` and reads its table, checking the ABI version
/// before anything else in the library is touched.
pub(super) fn open(path: &Path) -> Result<Loaded, NativeError> {
    // An absolute path: `dlopen` searches the library path for a bare file name.
    let path = std::fs::canonicalize(path).map_err(|error| NativeError::NotFound {
        path: path.to_owned(),
        error,
    })?;
    let library = dlopen(&path).map_err(|e| NativeError::NotALibrary {
        path: path.clone(),
        reason: error_chain(&e),
    })?;
    // Never unloaded: handler tables, buffers and thread-locals of the plugin
    // must outlive every call, and unloading Rust libraries is not sound.
    let library: &'static libloading::Library = Box::leak(Box::new(library));

    let abi = read_abi_version(library, &path)?;
    if !compatible(&abi) {
        return Err(NativeError::IncompatibleAbi {
            path,
            plugin: abi,
            host: HOST_ABI,
        });
    }

    // SAFETY: a plugin whose ABI version is compatible exports
    // `arkline_native_entry` with the `ArklineEntryFn` signature.
    let entry = unsafe { library.get::<ArklineEntryFn>(ENTRY_SYMBOL) }.map_err(|_| {
        NativeError::MissingEntry {
            path: path.clone(),
            abi: abi.clone(),
        }
    })?;
    // SAFETY: as above; the entry function takes no arguments.
    let table = unsafe { entry() };
    // SAFETY: the ABI requires a non-null result to point to a table that stays
    // valid and unchanged for the life of the process; null is checked inside.
    unsafe { read_table(table, path, abi) }
}

#[cfg(unix)]
fn dlopen(path: &Path) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: loading runs the library's initialisers; native plugins are trusted
    // code by definition (see the module docs), and their termination routines
    // never run because the library is never unloaded. `RTLD_NOW` reports missing
    // symbols now, rather than killing the process on a later call.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
}

#[cfg(not(unix))]
fn dlopen(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: as on unix: trusted code, never unloaded.
    unsafe { libloading::Library::new(path) }
}

fn read_abi_version(
    library: &'static libloading::Library,
    path: &Path,
) -> Result<Version, NativeError> {
    // SAFETY: `ARKLINE_NATIVE_ABI` is a data symbol; the symbol's value is its
    // address, read as a pointer and not called.
    let symbol =
        unsafe { library.get::<*const u8>(ABI_SYMBOL) }.map_err(|_| NativeError::NotAPlugin {
            path: path.to_owned(),
        })?;
    let start: *const u8 = *symbol;
    let invalid = |found: String, reason: &str| NativeError::InvalidAbiVersion {
        path: path.to_owned(),
        found,
        reason: reason.to_owned(),
    };
    if start.is_null() {
        return Err(invalid(String::new(), "a null symbol"));
    }
    let mut bytes = Vec::new();
    loop {
        if bytes.len() == MAX_ABI_STRING {
            return Err(invalid(
                String::from_utf8_lossy(&bytes).into_owned(),
                &format!("a NUL-terminated string of at most {MAX_ABI_STRING} bytes"),
            ));
        }
        // SAFETY: the ABI defines the symbol as a NUL-terminated string; reading
        // stops at the first NUL and never goes past MAX_ABI_STRING bytes.
        let byte = unsafe { start.add(bytes.len()).read() };
        if byte == 0 {
            break;
        }
        bytes.push(byte);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        invalid(
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
            "UTF-8 text",
        )
    })?;
    Version::parse(&text).map_err(|e| invalid(text.clone(), &format!("a semver version ({e})")))
}

/// Reads and validates the table at `table`, copying the names out of it.
///
/// # Safety
/// `table` is null or points to an [`ArklineNativeTable`] laid out as the ABI
/// says, whose pointers are valid for their lengths, and which stays valid and
/// unchanged for the life of the process.
pub(super) unsafe fn read_table(
    table: *const ArklineNativeTable,
    path: PathBuf,
    abi: Version,
) -> Result<Loaded, NativeError> {
    if table.is_null() {
        return Err(NativeError::NullTable { path });
    }
    let invalid = |reason: String| NativeError::InvalidTable {
        path: path.clone(),
        reason,
    };
    // SAFETY: non-null, and valid by the caller's contract.
    let table = unsafe { &*table };

    // SAFETY: the table's pointers are valid for their lengths (caller's contract).
    let name =
        unsafe { text(table.name_ptr, table.name_len, "the plugin name") }.map_err(&invalid)?;
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "the plugin name `{}` is empty or contains control characters",
            name.escape_debug()
        )));
    }
    // SAFETY: as above.
    let version = unsafe { text(table.version_ptr, table.version_len, "the plugin version") }
        .map_err(&invalid)?;
    let version = Version::parse(&version).map_err(|e| {
        invalid(format!(
            "the plugin version `{}` is not a semver version ({e})",
            version.escape_debug()
        ))
    })?;
    let free_buf = table
        .free_buf
        .ok_or_else(|| invalid("`free_buf` is null".to_owned()))?;

    if table.handler_count > MAX_HANDLERS {
        return Err(invalid(format!(
            "it declares {} handlers; at most {MAX_HANDLERS} are allowed",
            table.handler_count
        )));
    }
    let entries = if table.handler_count == 0 {
        &[][..]
    } else if table.handlers.is_null() {
        return Err(invalid(format!(
            "it declares {} handlers but `handlers` is null",
            table.handler_count
        )));
    } else {
        // SAFETY: non-null and valid for `handler_count` entries (caller's contract).
        unsafe { std::slice::from_raw_parts(table.handlers, table.handler_count) }
    };

    let mut names = Vec::with_capacity(entries.len());
    let mut handlers = Vec::with_capacity(entries.len());
    let mut seen = HashSet::new();
    for (index, entry) in entries.iter().enumerate() {
        let what = format!("the name of handler #{index}");
        // SAFETY: as above.
        let handler = unsafe { text(entry.name_ptr, entry.name_len, &what) }.map_err(&invalid)?;
        if !is_valid_handler_name(&handler) {
            return Err(invalid(format!(
                "handler #{index} is named `{}`; handler names are 1-128 ASCII letters, digits, `.`, `-` or `_`, starting with a letter",
                handler.escape_debug()
            )));
        }
        if !seen.insert(handler.clone()) {
            return Err(invalid(format!(
                "it registers the handler `{handler}` more than once"
            )));
        }
        let call = entry
            .call
            .ok_or_else(|| invalid(format!("the function of handler `{handler}` is null")))?;
        names.push(handler);
        handlers.push(Handler {
            call,
            user_data: entry.user_data,
        });
    }

    Ok(Loaded {
        info: NativePluginInfo {
            name,
            version,
            abi,
            path,
            handlers: names,
        },
        handlers,
        free_buf,
    })
}

/// Copies `len` bytes of UTF-8 text at `ptr`.
///
/// # Safety
/// `ptr` is null or valid for reading `len` bytes.
unsafe fn text(ptr: *const u8, len: usize, what: &str) -> Result<String, String> {
    if len > MAX_NAME_BYTES {
        return Err(format!(
            "{what} is {len} bytes long; at most {MAX_NAME_BYTES} are allowed"
        ));
    }
    if len == 0 {
        return Ok(String::new());
    }
    if ptr.is_null() {
        return Err(format!("{what} is a null pointer with length {len}"));
    }
    // SAFETY: non-null and valid for `len` bytes (caller's contract).
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    String::from_utf8(bytes.to_vec()).map_err(|e| format!("{what} is not UTF-8 ({e})"))
}

impl Loaded {
    /// Calls handler `index` (named `name`) with `payload`.
    pub(super) fn call(
        &self,
        index: usize,
        name: &str,
        payload: &[u8],
        limits: &NativeLimits,
    ) -> Result<Vec<u8>, NativeCallError> {
        let handler = &self.handlers[index];
        let mut out = ArklineBuf::EMPTY;
        // SAFETY: the function and `user_data` come from the plugin's table, which
        // stays valid for the life of the process; `payload` is valid for its
        // length during the call and `out` for a write. Handlers may run on any
        // thread and concurrently (an ABI requirement), and must not unwind (the
        // plugin catches its panics and reports STATUS_PANICKED).
        let status =
            unsafe { (handler.call)(handler.user_data, payload.as_ptr(), payload.len(), &mut out) };

        let protocol = |reason: String| NativeCallError::Protocol {
            handler: name.to_owned(),
            reason,
        };
        // SAFETY: the handler wrote `out`; a non-null `ptr` is valid for `len`
        // bytes until `free_buf` below (checked for null first), and at most
        // `len` bytes are read.
        let read = |n: usize| unsafe { bytes(&out, n.min(out.len)) };
        let result = if out.ptr.is_null() && out.len != 0 {
            Err(protocol(format!(
                "it returned a null buffer of length {}",
                out.len
            )))
        } else {
            match status {
                STATUS_OK if out.len > limits.max_reply_bytes => Err(NativeCallError::TooLarge {
                    handler: name.to_owned(),
                    what: PayloadKind::Reply,
                    len: out.len,
                    limit: limits.max_reply_bytes,
                }),
                STATUS_OK => Ok(read(out.len)),
                STATUS_ERROR => Err(NativeCallError::Failed {
                    handler: name.to_owned(),
                    message: message(read(MAX_MESSAGE_BYTES), out.len),
                }),
                STATUS_PANICKED => Err(NativeCallError::Panicked {
                    handler: name.to_owned(),
                    message: message(read(MAX_MESSAGE_BYTES), out.len),
                }),
                other => Err(protocol(format!(
                    "it returned status {other}; ABI {HOST_ABI} defines {STATUS_OK} (ok), {STATUS_ERROR} (error) and {STATUS_PANICKED} (panicked)"
                ))),
            }
        };
        if !out.ptr.is_null() {
            // SAFETY: `out` was written by this plugin's handler and is passed back
            // unchanged, once; nothing reads it afterwards.
            unsafe { (self.free_buf)(out) };
        }
        result
    }
}

/// Copies the first `n` bytes of `buf`.
///
/// # Safety
/// `buf.ptr` is null with `n == 0`, or valid for reading `n` bytes.
unsafe fn bytes(buf: &ArklineBuf, n: usize) -> Vec<u8> {
    if buf.ptr.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: valid for `n` bytes (caller's contract).
    unsafe { std::slice::from_raw_parts(buf.ptr, n) }.to_vec()
}

/// A plugin's message as text, marked when it was cut at MAX_MESSAGE_BYTES.
fn message(bytes: Vec<u8>, full_len: usize) -> String {
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if text.is_empty() {
        text.push_str("(no message)");
    }
    if full_len > bytes.len() {
        text.push_str(&format!(" … ({full_len} bytes, cut)"));
    }
    text
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
