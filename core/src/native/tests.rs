//! Table validation and the calling convention, with tables built in-process.
//! Loading real libraries is tested in `tests/tests/all/native_plugins.rs`.

use std::cell::Cell;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::Arc;

use semver::Version;

use super::abi::{
    ArklineBuf, ArklineHandler, ArklineHandlerFn, ArklineNativeTable, STATUS_ERROR, STATUS_OK,
    STATUS_PANICKED,
};
use super::*;

thread_local! {
    /// Buffers freed by `free_buf` on this thread (calls are synchronous).
    static FREED: Cell<usize> = const { Cell::new(0) };
}

fn leak_buf(bytes: Vec<u8>) -> ArklineBuf {
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    ArklineBuf {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    }
}

unsafe extern "C" fn free_buf(buf: ArklineBuf) {
    FREED.with(|f| f.set(f.get() + 1));
    // SAFETY: made by `leak_buf`, freed once by the host.
    drop(unsafe { Vec::from_raw_parts(buf.ptr, buf.len, buf.cap) });
}

/// What `canned` returns: `user_data` points to one of these.
struct Canned {
    status: i32,
    bytes: Vec<u8>,
}

unsafe extern "C" fn canned(
    user_data: *mut c_void,
    _in_ptr: *const u8,
    _in_len: usize,
    out: *mut ArklineBuf,
) -> i32 {
    // SAFETY: the test tables point `user_data` at a leaked `Canned`.
    let canned = unsafe { &*user_data.cast::<Canned>() };
    // SAFETY: the host passes a writable `out`.
    unsafe { out.write(leak_buf(canned.bytes.clone())) };
    canned.status
}

unsafe extern "C" fn echo(
    _user_data: *mut c_void,
    in_ptr: *const u8,
    in_len: usize,
    out: *mut ArklineBuf,
) -> i32 {
    let input = if in_len == 0 {
        Vec::new()
    } else {
        // SAFETY: the host passes `in_len` readable bytes.
        unsafe { std::slice::from_raw_parts(in_ptr, in_len) }.to_vec()
    };
    // SAFETY: the host passes a writable `out`.
    unsafe { out.write(leak_buf(input)) };
    STATUS_OK
}

/// Returns a null buffer with a length: an ABI violation.
unsafe extern "C" fn null_with_len(
    _user_data: *mut c_void,
    _in_ptr: *const u8,
    _in_len: usize,
    out: *mut ArklineBuf,
) -> i32 {
    // SAFETY: the host passes a writable `out`.
    unsafe {
        out.write(ArklineBuf {
            ptr: std::ptr::null_mut(),
            len: 5,
            cap: 0,
        })
    };
    STATUS_OK
}

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

struct Entry {
    name: &'static str,
    call: Option<ArklineHandlerFn>,
    user_data: *mut c_void,
}

fn entry(name: &str, status: i32, bytes: &[u8]) -> Entry {
    let reply = Box::leak(Box::new(Canned {
        status,
        bytes: bytes.to_vec(),
    }));
    Entry {
        name: leak_str(name),
        call: Some(canned),
        user_data: std::ptr::from_mut(reply).cast(),
    }
}

fn plain(name: &str, call: ArklineHandlerFn) -> Entry {
    Entry {
        name: leak_str(name),
        call: Some(call),
        user_data: std::ptr::null_mut(),
    }
}

/// A leaked table, as a plugin would keep it for the life of the process.
fn table(name: &str, version: &str, entries: Vec<Entry>) -> &'static mut ArklineNativeTable {
    let handlers: &'static [ArklineHandler] = Box::leak(
        entries
            .into_iter()
            .map(|e| ArklineHandler {
                name_ptr: e.name.as_ptr(),
                name_len: e.name.len(),
                call: e.call,
                user_data: e.user_data,
            })
            .collect::<Box<[_]>>(),
    );
    let name = leak_str(name);
    let version = leak_str(version);
    Box::leak(Box::new(ArklineNativeTable {
        name_ptr: name.as_ptr(),
        name_len: name.len(),
        version_ptr: version.as_ptr(),
        version_len: version.len(),
        handler_count: handlers.len(),
        handlers: handlers.as_ptr(),
        free_buf: Some(free_buf),
    }))
}

fn read(table: *const ArklineNativeTable) -> Result<plugin::Loaded, NativeError> {
    // SAFETY: the tables of these tests are leaked, valid and never changed.
    unsafe {
        plugin::read_table(
            table,
            PathBuf::from("/test/libfake.so"),
            Version::new(1, 0, 0),
        )
    }
}

fn loaded(table: *const ArklineNativeTable) -> NativePlugin {
    NativePlugin {
        loaded: Arc::new(read(table).expect("a valid table")),
    }
}

fn invalid_table_reason(table: *const ArklineNativeTable) -> String {
    match read(table) {
        Err(NativeError::InvalidTable { reason, .. }) => reason,
        other => panic!("expected InvalidTable, got {other:?}"),
    }
}

#[test]
fn abi_version_constant_matches_the_host_abi() {
    assert_eq!(HOST_ABI.to_string(), ABI_VERSION);
}

#[test]
fn plugins_load_when_the_host_abi_matches_caret_their_abi() {
    let v = |s: &str| Version::parse(s).expect("version");
    assert!(abi_compatible(&v("1.0.0")));
    assert!(abi_compatible(&v("1.0.0-rc.1")));
    assert!(!abi_compatible(&v("1.0.1")), "newer patch than the host");
    assert!(!abi_compatible(&v("1.1.0")), "newer minor than the host");
    assert!(!abi_compatible(&v("2.0.0")));
    assert!(!abi_compatible(&v("0.9.0")));
}

#[test]
fn handler_names_are_dotted_identifiers() {
    for ok in ["kv.get", "a", "Debug_panic-2", &"x".repeat(128)] {
        assert!(is_valid_handler_name(ok), "{ok}");
    }
    for bad in [
        "",
        "1kv",
        ".kv",
        "kv,get",
        "kv.*",
        "*",
        "kv get",
        "kv/get",
        &"x".repeat(129),
    ] {
        assert!(!is_valid_handler_name(bad), "{bad}");
    }
}

#[test]
fn a_valid_table_reads_into_plugin_info() {
    let info = read(table(
        "fake",
        "0.3.1",
        vec![
            entry("a.one", STATUS_OK, b""),
            entry("a.two", STATUS_OK, b""),
        ],
    ))
    .expect("valid")
    .info;
    assert_eq!(info.name, "fake");
    assert_eq!(info.version, Version::new(0, 3, 1));
    assert_eq!(info.abi, Version::new(1, 0, 0));
    assert_eq!(info.path, PathBuf::from("/test/libfake.so"));
    assert_eq!(info.handlers, ["a.one", "a.two"]);
}

#[test]
fn a_null_table_is_refused() {
    let err = read(std::ptr::null()).expect_err("null");
    assert!(matches!(err, NativeError::NullTable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "`arkline_native_entry` of native plugin /test/libfake.so returned a null table: the plugin failed to initialise"
    );
}

#[test]
fn malformed_tables_are_refused_with_the_broken_rule() {
    let t = table(
        "fake",
        "1.0.0",
        vec![entry("dup", 0, b""), entry("dup", 0, b"")],
    );
    assert_eq!(
        invalid_table_reason(t),
        "it registers the handler `dup` more than once"
    );

    let t = table("fake", "1.0.0", vec![entry("kv.*", 0, b"")]);
    assert!(
        invalid_table_reason(t).starts_with("handler #0 is named `kv.*`; handler names are"),
        "{}",
        invalid_table_reason(t)
    );

    let t = table("fake", "one", vec![]);
    assert!(
        invalid_table_reason(t).starts_with("the plugin version `one` is not a semver version"),
        "{}",
        invalid_table_reason(t)
    );

    let t = table("", "1.0.0", vec![]);
    assert!(invalid_table_reason(t).contains("is empty"));

    let t = table("fake", "1.0.0", vec![]);
    t.free_buf = None;
    assert_eq!(invalid_table_reason(t), "`free_buf` is null");

    let t = table(
        "fake",
        "1.0.0",
        vec![Entry {
            name: "kv.get",
            call: None,
            user_data: std::ptr::null_mut(),
        }],
    );
    assert_eq!(
        invalid_table_reason(t),
        "the function of handler `kv.get` is null"
    );

    let t = table("fake", "1.0.0", vec![]);
    t.handler_count = 3;
    t.handlers = std::ptr::null();
    assert_eq!(
        invalid_table_reason(t),
        "it declares 3 handlers but `handlers` is null"
    );

    let t = table("fake", "1.0.0", vec![]);
    t.handler_count = 1_000_000;
    assert_eq!(
        invalid_table_reason(t),
        "it declares 1000000 handlers; at most 1024 are allowed"
    );

    let t = table("fake", "1.0.0", vec![]);
    t.name_ptr = std::ptr::null();
    assert_eq!(
        invalid_table_reason(t),
        "the plugin name is a null pointer with length 4"
    );

    let err = read(table("fake", "1.0.0", vec![])).err();
    assert!(err.is_none(), "an empty handler list is allowed: {err:?}");
}

fn registry(entries: Vec<Entry>) -> NativePlugins {
    let plugins = NativePlugins::new();
    plugins
        .insert(loaded(table("fake", "1.0.0", entries)))
        .expect("registers");
    plugins
}

fn freed() -> usize {
    FREED.with(Cell::get)
}

#[test]
fn statuses_map_to_replies_and_errors_and_every_buffer_is_freed() {
    let plugins = registry(vec![
        plain("t.echo", echo),
        entry("t.fail", STATUS_ERROR, b"no such thing"),
        entry("t.panic", STATUS_PANICKED, b"boom"),
        entry("t.silent", STATUS_ERROR, b""),
        entry("t.odd", 7, b"?"),
        plain("t.null", null_with_len),
    ]);
    let before = freed();

    assert_eq!(plugins.call("t.echo", b"hello"), Ok(b"hello".to_vec()));
    assert_eq!(plugins.call("t.echo", b""), Ok(Vec::new()));
    let err = plugins.call("t.fail", b"").expect_err("fails");
    assert_eq!(
        err,
        NativeCallError::Failed {
            handler: "t.fail".into(),
            message: "no such thing".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "native handler `t.fail` failed: no such thing"
    );
    let err = plugins.call("t.panic", b"").expect_err("panics");
    assert_eq!(err.to_string(), "native handler `t.panic` panicked: boom");
    assert_eq!(
        plugins.call("t.silent", b""),
        Err(NativeCallError::Failed {
            handler: "t.silent".into(),
            message: "(no message)".into()
        })
    );
    let err = plugins.call("t.odd", b"").expect_err("unknown status");
    assert_eq!(
        err.to_string(),
        "native handler `t.odd` broke the native plugin ABI: it returned status 7; ABI 1.0.0 defines 0 (ok), 1 (error) and 2 (panicked)"
    );
    let err = plugins.call("t.null", b"").expect_err("null buffer");
    assert!(matches!(err, NativeCallError::Protocol { .. }), "{err:?}");
    // echo ×2, fail, panic, silent, odd; the null buffer has nothing to free.
    assert_eq!(freed() - before, 6);
}

#[test]
fn long_messages_are_cut() {
    let long = "x".repeat(10_000);
    let plugins = registry(vec![entry("t.long", STATUS_ERROR, long.as_bytes())]);
    match plugins.call("t.long", b"") {
        Err(NativeCallError::Failed { message, .. }) => {
            assert!(message.starts_with(&"x".repeat(4096)), "{message}");
            assert!(message.ends_with(" … (10000 bytes, cut)"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn limits_refuse_large_requests_and_replies_but_free_the_reply() {
    let plugins = NativePlugins::with_limits(
        NativeLimits::default()
            .max_request_bytes(4)
            .max_reply_bytes(8),
    );
    plugins
        .insert(loaded(table(
            "fake",
            "1.0.0",
            vec![plain("t.echo", echo), entry("t.big", STATUS_OK, &[0; 9])],
        )))
        .expect("registers");
    let before = freed();
    assert_eq!(
        plugins.call("t.echo", b"12345"),
        Err(NativeCallError::TooLarge {
            handler: "t.echo".into(),
            what: PayloadKind::Request,
            len: 5,
            limit: 4
        })
    );
    let err = plugins.call("t.big", b"").expect_err("too large");
    assert_eq!(
        err.to_string(),
        "the reply of native handler `t.big` is 9 bytes, over the limit of 8"
    );
    assert_eq!(freed() - before, 1, "the refused reply is freed");
    assert_eq!(plugins.call("t.echo", b"1234"), Ok(b"1234".to_vec()));
}

#[test]
fn unknown_handlers_and_duplicates_are_refused() {
    let plugins = registry(vec![entry("t.a", STATUS_OK, b"")]);
    assert_eq!(
        plugins.call("t.b", b""),
        Err(NativeCallError::UnknownHandler("t.b".into()))
    );
    let err = plugins
        .insert(loaded(table(
            "other",
            "2.0.0",
            vec![entry("t.c", STATUS_OK, b""), entry("t.a", STATUS_OK, b"")],
        )))
        .expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        "handler `t.a` of native plugin `other` (/test/libfake.so) is already registered by native plugin `fake` (/test/libfake.so); handler names must be unique across loaded native plugins"
    );
    assert_eq!(plugins.handlers(), ["t.a"], "nothing of `other` registered");
    assert_eq!(plugins.plugins().len(), 1);
}

#[test]
fn the_registry_is_shared_by_clones_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<NativePlugins>();
    assert_send_sync::<NativePlugin>();

    let plugins = NativePlugins::new();
    let clone = plugins.clone();
    std::thread::spawn(move || {
        clone
            .insert(loaded(table("fake", "1.0.0", vec![plain("t.echo", echo)])))
            .expect("registers")
    })
    .join()
    .expect("thread");
    assert_eq!(plugins.handlers(), ["t.echo"]);
    assert_eq!(plugins.call("t.echo", b"x"), Ok(b"x".to_vec()));
}
