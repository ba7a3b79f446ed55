//! `arkline --color` and `NO_COLOR`: the real binary running a real `.arkc`, its
//! stderr a pipe and (on Linux) a pseudo-terminal, checked for escape codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::arkc::{self, TestEngine};

const ESC: &str = "\x1b[";

const PIPELINE: &str = "\
name: build
stages:
  - name: compile
    steps:
      - name: shout
        uses: faults/upper
        with: { text: hello }
      - name: nap
        uses: faults/sleep
        with: { ms: 300 }
";

fn archive(dir: &Path) -> PathBuf {
    arkc::write(
        dir,
        "color.arkc",
        &[TestEngine {
            name: "team-a",
            bizes: &[("faults", &[])],
            quota: 1,
            pipelines: &[("build.yaml", PIPELINE)],
        }],
    )
}

/// `arkline <args> run <archive>` on a fresh data dir, with no colour settings
/// from the environment but those given.
fn arkline(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arkline"));
    cmd.env_remove("ARKLINE_DATA_DIR")
        .env_remove("ARKLINE_LOG")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("TERM", "xterm-256color")
        .envs(env.iter().copied())
        .args(args)
        .arg("run")
        .arg(dir.join("color.arkc"))
        .arg("--data-dir")
        .arg(tempfile::tempdir_in(dir).expect("data dir").keep());
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(out: &Output) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn never_and_no_color_write_no_escape_codes_and_always_colours_a_pipe() {
    let tmp = tempfile::tempdir().expect("tempdir");
    archive(tmp.path());

    for (args, env) in [
        (&["--color", "never"][..], &[][..]),
        (&[][..], &[("NO_COLOR", "1")][..]),
        (&[][..], &[][..]),
    ] {
        let out = arkline(tmp.path(), args, env).output().expect("runs");
        let (stdout, stderr) = succeeded(&out);
        assert!(
            !stdout.contains(ESC) && !stderr.contains(ESC),
            "{args:?} {env:?} wrote escape codes:\n{stdout:?}\n{stderr:?}"
        );
        assert!(
            stderr.contains("Ok team-a/build-1 compile/shout"),
            "{stderr}"
        );
    }

    // `always` colours even a pipe, and wins over NO_COLOR; the text is the same.
    for env in [&[][..], &[("NO_COLOR", "1")][..]] {
        let out = arkline(tmp.path(), &["--color", "always"], env)
            .output()
            .expect("runs");
        let (_, stderr) = succeeded(&out);
        assert!(stderr.contains(ESC), "{env:?}: no colour:\n{stderr}");
        let stripped = strip_escapes(&stderr);
        assert!(
            stripped.contains("          Ok team-a/build-1 compile/shout"),
            "{stripped}"
        );
    }

    // The option is global: after the subcommand too.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arkline"));
    let out = cmd
        .env_remove("NO_COLOR")
        .arg("run")
        .arg(tmp.path().join("color.arkc"))
        .args(["--color", "sometimes"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("'sometimes'"), "{stderr}");
    assert!(stderr.contains("auto, always, never"), "{stderr}");
}

/// Removes `ESC [ … letter` sequences.
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `cmd` with stderr on a new pseudo-terminal; returns its exit code and
/// everything it wrote there.
#[cfg(target_os = "linux")]
fn on_a_terminal(mut cmd: Command) -> (Option<i32>, String) {
    use std::io::Read as _;
    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::process::Stdio;

    let (mut master, mut terminal) = (-1, -1);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors into the given integers; the
    // name pointer may be null, and the termios and winsize it reads are valid
    // for the call (null termios: the defaults).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by
    // nothing else; each is closed exactly once, by its OwnedFd.
    let (master, terminal) =
        unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(terminal)) };
    let terminal = std::fs::File::from(terminal);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(terminal));
    let child = cmd.spawn().expect("spawns");
    // The command holds our copy of the terminal: drop it, so reading ends
    // when the child closes its own.
    drop(cmd);
    let mut master = std::fs::File::from(master);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Linux reports EIO once the last terminal side is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });
    let out = child.wait_with_output().expect("waits");
    let seen = reader.join().expect("reader");
    (out.status.code(), text(&seen))
}

#[cfg(target_os = "linux")]
#[test]
fn on_a_terminal_auto_shows_live_progress_but_never_and_no_color_write_plain_lines() {
    let tmp = tempfile::tempdir().expect("tempdir");
    archive(tmp.path());

    // The terminal is real: `auto` draws spinners and colours there.
    let (code, seen) = on_a_terminal(arkline(tmp.path(), &[], &[]));
    assert_eq!(code, Some(0), "{seen}");
    assert!(
        seen.contains(ESC),
        "no escape codes on a terminal:\n{seen:?}"
    );

    for (args, env) in [
        (&["--color", "never"][..], &[][..]),
        (&[][..], &[("NO_COLOR", "1")][..]),
        (&[][..], &[("TERM", "dumb")][..]),
    ] {
        let (code, seen) = on_a_terminal(arkline(tmp.path(), args, env));
        assert_eq!(code, Some(0), "{seen}");
        assert!(
            !seen.contains(ESC) && !seen.contains('\x1b'),
            "{args:?} {env:?} wrote escape codes on a terminal:\n{seen:?}"
        );
        assert!(
            seen.contains("Finished team-a/build-1 Succeeded"),
            "plain lines instead of spinners: {seen:?}"
        );
    }
}
