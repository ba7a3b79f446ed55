//! Size flags of `arkline serve` read with `arkline::model::ByteSize`: the
//! spellings it takes, and the message a user gets for one it does not.

use std::process::Command;

fn serve(args: &[&str]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_arkline"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_size_is_a_usage_error_that_shows_how_to_write_one() {
    let (code, stderr) = serve(&["--insecure-no-auth", "--max-upload", "lots"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--max-upload"), "{stderr}");
    assert!(stderr.contains("`lots` is not a size"), "{stderr}");
    assert!(stderr.contains("`64MiB`"), "{stderr}");

    let (code, stderr) = serve(&["--insecure-no-auth", "--max-body", "3 parsecs"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown unit `parsecs`"), "{stderr}");
}

#[test]
fn good_sizes_get_past_the_command_line() {
    // Without tokens the server refuses to start, after the flags were read: a
    // size it took leads to that refusal, not to a complaint about the size.
    for size in ["64MiB", "64 mib", "1.5M", "512KB", "1048576"] {
        let (_, stderr) = serve(&["--max-upload", size, "--max-body", "1K"]);
        assert!(!stderr.contains("invalid value"), "{size}: {stderr}");
        assert!(
            stderr.contains("the admin API needs tokens"),
            "{size}: {stderr}"
        );
    }
}
