//! The plugin side of the arkline native plugin ABI 1.0.0.
//!
//! The contract itself is written down in the host's `arkline::native` module
//! docs; this module implements it for a Rust plugin so that handlers are plain
//! closures over byte slices:
//!
//! ```text
//! const ABI: &str = abi::ABI_VERSION;
//! abi::export_plugin!(abi: ABI, init: plugin);
//!
//! fn plugin() -> abi::Plugin {
//!     abi::Plugin::new("echo", env!("CARGO_PKG_VERSION"))
//!         .handler("echo.say", |input| Ok(input.to_vec()))
//! }
//! ```
//!
//! What it takes care of:
//! - the `ARKLINE_NATIVE_ABI` symbol, a NUL-terminated static built at compile time;
//! - `arkline_native_entry`, which builds the table once (the host may load the
//!   same library more than once) and returns a null table if building it panics;
//! - a trampoline per call that catches every panic with `catch_unwind` — a panic
//!   unwinding out of an `extern "C"` function aborts the whole host process — and
//!   reports it, with its location, with status [`STATUS_PANICKED`] rather than
//!   printing it on the host's stderr;
//! - reply and message buffers allocated as `Vec<u8>` and freed by `free_buf`.
//!
//! Panics are only caught when the plugin is built with `panic = "unwind"` (the
//! default for `cdylib`s, and this workspace's `dev`/`release` profiles). This file
//! uses only `std`, so another plugin can copy it as is.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Once, OnceLock};

/// The native plugin ABI version this module implements.
pub const ABI_VERSION: &str = "1.0.0";

/// Handler status: `out` holds the reply.
pub const STATUS_OK: i32 = 0;
/// Handler status: `out` holds a UTF-8 error message.
pub const STATUS_ERROR: i32 = 1;
/// Handler status: the handler panicked; `out` holds the UTF-8 panic message.
pub const STATUS_PANICKED: i32 = 2;

/// A byte buffer owned by the plugin and handed to the host, which copies it and
/// passes it back, unchanged, to [`ArklineNativeTable::free_buf`].
#[repr(C)]
#[derive(Debug)]
pub struct ArklineBuf {
    /// The bytes; null for an empty buffer that needs no freeing.
    pub ptr: *mut u8,
    /// The number of bytes at `ptr`.
    pub len: usize,
    /// Plugin-private (here the `Vec`'s capacity); the host never interprets it.
    pub cap: usize,
}

impl ArklineBuf {
    fn from_vec(bytes: Vec<u8>) -> Self {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        ArklineBuf {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }
}

/// A handler as the host calls it.
pub type ArklineHandlerFn = unsafe extern "C" fn(
    user_data: *mut c_void,
    in_ptr: *const u8,
    in_len: usize,
    out: *mut ArklineBuf,
) -> i32;

/// One named handler of the table.
#[repr(C)]
#[derive(Debug)]
pub struct ArklineHandler {
    /// The handler's name, UTF-8, not NUL-terminated.
    pub name_ptr: *const u8,
    /// The length of the name in bytes.
    pub name_len: usize,
    /// The function the host calls.
    pub call: Option<ArklineHandlerFn>,
    /// Passed to `call` unchanged.
    pub user_data: *mut c_void,
}

/// The table `arkline_native_entry` returns.
#[repr(C)]
#[derive(Debug)]
pub struct ArklineNativeTable {
    /// The plugin's name, UTF-8, not NUL-terminated.
    pub name_ptr: *const u8,
    /// The length of the name in bytes.
    pub name_len: usize,
    /// The plugin's version (semver), UTF-8, not NUL-terminated.
    pub version_ptr: *const u8,
    /// The length of the version in bytes.
    pub version_len: usize,
    /// The number of entries at `handlers`.
    pub handler_count: usize,
    /// The handlers.
    pub handlers: *const ArklineHandler,
    /// Frees a buffer a handler wrote to `out`.
    pub free_buf: Option<unsafe extern "C" fn(buf: ArklineBuf)>,
}

type HandlerBox = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static>;

/// A handler closure behind a thin pointer, so it fits in `user_data`.
struct Handler(HandlerBox);

/// A plugin under construction: its name, version and handlers.
pub struct Plugin {
    name: String,
    version: String,
    handlers: Vec<(String, Box<Handler>)>,
}

impl Plugin {
    /// A plugin called `name` at `version` (semver), with no handlers yet.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Plugin {
            name: name.into(),
            version: version.into(),
            handlers: Vec::new(),
        }
    }

    /// Adds the handler `name`. It receives the request payload and returns the
    /// reply, or an error message for the caller. It may be called from several
    /// host threads at once; a panic is caught and reported to the host.
    pub fn handler(
        mut self,
        name: impl Into<String>,
        handler: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Self {
        self.handlers
            .push((name.into(), Box::new(Handler(Box::new(handler)))));
        self
    }
}

/// A built table and everything its pointers point into. Kept in a `static` for
/// the life of the process: the host never unloads a native plugin.
pub struct Exported {
    table: ArklineNativeTable,
    // The table points into these heap allocations, which never move.
    _entries: Box<[ArklineHandler]>,
    _plugin: Plugin,
}

// SAFETY: the raw pointers in `table` and `_entries` point into `_plugin`'s heap
// allocations (strings and boxed handlers), which are never mutated after
// `Exported::new`; the handlers themselves are `Send + Sync`.
unsafe impl Send for Exported {}
// SAFETY: as for `Send`: shared access only ever reads immutable data or calls
// `Sync` closures.
unsafe impl Sync for Exported {}

impl Exported {
    fn new(plugin: Plugin) -> Self {
        let entries: Box<[ArklineHandler]> = plugin
            .handlers
            .iter()
            .map(|(name, handler)| ArklineHandler {
                name_ptr: name.as_ptr(),
                name_len: name.len(),
                call: Some(trampoline),
                user_data: std::ptr::from_ref::<Handler>(handler)
                    .cast_mut()
                    .cast::<c_void>(),
            })
            .collect();
        let table = ArklineNativeTable {
            name_ptr: plugin.name.as_ptr(),
            name_len: plugin.name.len(),
            version_ptr: plugin.version.as_ptr(),
            version_len: plugin.version.len(),
            handler_count: entries.len(),
            handlers: entries.as_ptr(),
            free_buf: Some(free_buf),
        };
        Exported {
            table,
            _entries: entries,
            _plugin: plugin,
        }
    }
}

/// The body of `arkline_native_entry`: builds the table on the first call and
/// returns the same one afterwards; null if `init` panicked.
pub fn entry(
    cell: &'static OnceLock<Option<Exported>>,
    init: fn() -> Plugin,
) -> *const ArklineNativeTable {
    let exported = cell.get_or_init(|| {
        install_panic_hook();
        catch_unwind(|| Exported::new(init())).ok()
    });
    match exported {
        Some(exported) => &exported.table,
        None => std::ptr::null(),
    }
}

thread_local! {
    /// Set while a handler runs on this thread.
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic inside a handler on this thread happened.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics inside handlers are reported to the host, location included, instead
/// of printed on the host's stderr; every other panic of the plugin (on threads
/// of its own, say) still goes to the hook that was installed before. The plugin
/// links its own copy of `std`, so this hook is the plugin's alone.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_HANDLER.with(Cell::get) {
                let location = info.location().map(ToString::to_string);
                PANIC_LOCATION.with(|l| *l.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// `s` followed by a NUL, as an array of exactly `N = s.len() + 1` bytes; fails
/// to compile when `s` contains a NUL or `N` is wrong.
pub const fn nul_terminated<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() + 1 == N, "N must be s.len() + 1");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i] != 0, "the ABI version must not contain NUL");
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Calls the [`Handler`] at `user_data` and reports its outcome; never unwinds.
///
/// # Safety
/// The host's side of the ABI: `user_data` is the pointer from this handler's
/// table entry, `in_ptr` points to `in_len` readable bytes (or `in_len` is 0) that
/// stay valid during the call, and `out` is valid for a write.
unsafe extern "C" fn trampoline(
    user_data: *mut c_void,
    in_ptr: *const u8,
    in_len: usize,
    out: *mut ArklineBuf,
) -> i32 {
    IN_HANDLER.with(|h| h.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `user_data` was made from a `&Handler` in `Exported::new`, and
        // the handler lives in a `static` for the rest of the process.
        let handler = unsafe { &*user_data.cast::<Handler>() };
        let input: &[u8] = if in_len == 0 || in_ptr.is_null() {
            &[]
        } else {
            // SAFETY: the host guarantees `in_len` readable bytes at `in_ptr`
            // for the duration of the call.
            unsafe { std::slice::from_raw_parts(in_ptr, in_len) }
        };
        (handler.0)(input)
    }));
    IN_HANDLER.with(|h| h.set(false));
    let (status, bytes) = match outcome {
        Ok(Ok(reply)) => (STATUS_OK, reply),
        Ok(Err(message)) => (STATUS_ERROR, message.into_bytes()),
        Err(payload) => {
            let mut message = panic_message(payload.as_ref());
            if let Some(location) = PANIC_LOCATION.with(|l| l.borrow_mut().take()) {
                message.push_str(&format!(" (at {location})"));
            }
            // Dropping the payload may itself panic; that must not unwind either.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload))).map_err(std::mem::forget);
            (STATUS_PANICKED, message.into_bytes())
        }
    };
    // SAFETY: the host guarantees `out` is valid for a write.
    unsafe { out.write(ArklineBuf::from_vec(bytes)) };
    status
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "the handler panicked with a non-string payload".to_owned()
    }
}

/// Frees a buffer made by [`ArklineBuf::from_vec`].
///
/// # Safety
/// `buf` is a buffer a handler of this plugin wrote to `out`, passed back unchanged
/// and at most once.
unsafe extern "C" fn free_buf(buf: ArklineBuf) {
    if !buf.ptr.is_null() {
        // SAFETY: `ptr`, `len` and `cap` come from a `Vec<u8>` leaked by
        // `ArklineBuf::from_vec`, and the host frees each buffer once.
        drop(unsafe { Vec::from_raw_parts(buf.ptr, buf.len, buf.cap) });
    }
}

/// Exports the two symbols of the ABI: `ARKLINE_NATIVE_ABI` (the NUL-terminated
/// ABI version `abi`, a `&'static str` constant) and `arkline_native_entry`
/// (the table of the [`Plugin`] returned by `init`).
macro_rules! export_plugin {
    (abi: $abi:expr, init: $init:path $(,)?) => {
        const ARKLINE_NATIVE_ABI_STR: &str = $abi;

        /// The native plugin ABI version this library was built for.
        // SAFETY: the symbol name is the ABI's and defined once per library.
        #[unsafe(no_mangle)]
        pub static ARKLINE_NATIVE_ABI: [u8; ARKLINE_NATIVE_ABI_STR.len() + 1] =
            $crate::abi::nul_terminated(ARKLINE_NATIVE_ABI_STR);

        /// Returns the plugin's handler table; null if it could not be built.
        // SAFETY: the symbol name is the ABI's and defined once per library.
        #[unsafe(no_mangle)]
        pub extern "C" fn arkline_native_entry() -> *const $crate::abi::ArklineNativeTable {
            static EXPORTED: ::std::sync::OnceLock<Option<$crate::abi::Exported>> =
                ::std::sync::OnceLock::new();
            $crate::abi::entry(&EXPORTED, $init)
        }
    };
}
pub(crate) use export_plugin;

#[cfg(test)]
mod tests {
    use super::*;

    fn call(handler: &ArklineHandler, input: &[u8]) -> (i32, Vec<u8>) {
        let mut out = ArklineBuf {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        };
        let call = handler.call.expect("a handler function");
        // SAFETY: the arguments follow the ABI: `user_data` from the entry, a live
        // input slice, and a writable `out`.
        let status = unsafe { call(handler.user_data, input.as_ptr(), input.len(), &mut out) };
        // SAFETY: `out` was written by the handler, read once, then freed once.
        let bytes = unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
        // SAFETY: as above.
        unsafe { free_buf(out) };
        (status, bytes)
    }

    #[test]
    fn trampoline_reports_replies_errors_and_panics_by_status() {
        let exported = Exported::new(
            Plugin::new("t", "1.0.0")
                .handler("echo", |input| Ok(input.to_vec()))
                .handler("fail", |_| Err("no".to_owned()))
                .handler("panic", |_| panic!("boom {}", 1)),
        );
        let entries = &exported._entries;
        assert_eq!(call(&entries[0], b"hi"), (STATUS_OK, b"hi".to_vec()));
        assert_eq!(call(&entries[0], b""), (STATUS_OK, Vec::new()));
        assert_eq!(call(&entries[1], b"x"), (STATUS_ERROR, b"no".to_vec()));
        let (status, message) = call(&entries[2], b"x");
        let message = String::from_utf8(message).expect("UTF-8");
        assert_eq!(status, STATUS_PANICKED);
        assert!(message.starts_with("boom 1"), "{message}");
    }

    #[test]
    fn abi_string_is_nul_terminated() {
        const S: &str = "1.2.3";
        const A: [u8; 6] = nul_terminated(S);
        assert_eq!(&A, b"1.2.3\0");
    }
}
