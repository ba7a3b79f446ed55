//! The C declarations of native plugin ABI 1.0.0, as the host reads them.
//!
//! These types mirror the C header in the [module docs](super) field for field.
//! Plugins do not need this crate: they implement the same layout themselves
//! (the example plugin `plugins/native-kv` does so in its `abi` module).

use std::ffi::c_void;

/// The symbol holding the ABI version a plugin was built for: a NUL-terminated
/// byte string such as `"1.0.0\0"`.
pub const ABI_SYMBOL: &str = "ARKLINE_NATIVE_ABI";

/// The symbol of the entry function, `arkline_native_entry`.
pub const ENTRY_SYMBOL: &str = "arkline_native_entry";

/// Handler status: `out` holds the reply.
pub const STATUS_OK: i32 = 0;
/// Handler status: the handler refused or failed; `out` holds a UTF-8 message.
pub const STATUS_ERROR: i32 = 1;
/// Handler status: the handler panicked and the plugin caught it; `out` holds a
/// UTF-8 message.
pub const STATUS_PANICKED: i32 = 2;

/// A byte buffer allocated by the plugin, read by the host and handed back to
/// [`ArklineNativeTable::free_buf`] unchanged.
#[repr(C)]
#[derive(Debug)]
pub struct ArklineBuf {
    /// The bytes; null means empty and nothing to free.
    pub ptr: *mut u8,
    /// The number of bytes at `ptr`.
    pub len: usize,
    /// Private to the plugin (a Rust plugin keeps its `Vec` capacity here).
    pub cap: usize,
}

impl ArklineBuf {
    /// The buffer the host passes in before each call: null, nothing to free.
    pub const EMPTY: ArklineBuf = ArklineBuf {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };
}

/// A handler: reads `in_len` bytes at `in_ptr`, writes its reply or message to
/// `*out` and returns a status.
pub type ArklineHandlerFn = unsafe extern "C" fn(
    user_data: *mut c_void,
    in_ptr: *const u8,
    in_len: usize,
    out: *mut ArklineBuf,
) -> i32;

/// Frees a buffer a handler wrote to `out`.
pub type ArklineFreeBufFn = unsafe extern "C" fn(buf: ArklineBuf);

/// The entry function, `arkline_native_entry`.
pub type ArklineEntryFn = unsafe extern "C" fn() -> *const ArklineNativeTable;

/// One named handler.
#[repr(C)]
#[derive(Debug)]
pub struct ArklineHandler {
    /// The name, UTF-8, not NUL-terminated.
    pub name_ptr: *const u8,
    /// The length of the name in bytes.
    pub name_len: usize,
    /// The function; must not be null.
    pub call: Option<ArklineHandlerFn>,
    /// Passed to `call` unchanged; the host never dereferences it.
    pub user_data: *mut c_void,
}

/// The table returned by `arkline_native_entry`.
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
    /// The handlers; may be null only when `handler_count` is 0.
    pub handlers: *const ArklineHandler,
    /// Frees reply and message buffers; must not be null.
    pub free_buf: Option<ArklineFreeBufFn>,
}
