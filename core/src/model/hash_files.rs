//! `hashFiles(pattern, …)` of the expression language: one SHA-256 over the
//! workspace files a set of globs selects, for cache keys such as
//! `cargo-${{ hashFiles('**/Cargo.lock') }}`.
//!
//! Semantics follow GitHub Actions' `hashFiles`:
//! * patterns are globs relative to the workspace root, matched against each
//!   file's relative path with `/` separators (`*` stays within one directory,
//!   `**` crosses any number); a leading `./` is ignored;
//! * a pattern starting with `!` excludes what it matches: a file is selected
//!   when some include pattern matches it and no exclude pattern does;
//! * no file selected gives `""`.
//!
//! The walk never leaves the root: `.git` directories are skipped, symbolic
//! links to directories are not entered, and a symbolic link to a file counts
//! (with the target's contents) only when the target lies inside the root.
//! Names that are not UTF-8 cannot be matched by a pattern and are skipped.
//!
//! The hash: the selected paths are sorted (byte order of the `/`-separated
//! relative path); for each, `d = SHA-256(path ‖ 0x00 ‖ contents)`; the result is
//! the lower-case hex of `SHA-256(d₁ ‖ d₂ ‖ …)`. Putting the path in makes a
//! rename change the hash, like GitHub's.

use std::io::Read;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};

/// Files one call may select: past it, hashing is refused rather than reading
/// a whole disk to build a cache key.
pub(crate) const MAX_FILES: usize = 100_000;

/// Directory entries one call may walk, selected or not, so that a workspace
/// with a huge `node_modules` fails clearly instead of stalling a step.
pub(crate) const MAX_ENTRIES: usize = 1_000_000;

/// Why `hashFiles` could not give a hash.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HashFilesError {
    /// A pattern is absolute or goes up with `..`.
    #[error(
        "pattern `{0}` leaves the workspace; patterns are relative to the workspace and cannot be absolute or contain `..`"
    )]
    Escapes(String),
    /// A pattern is not a glob.
    #[error("pattern `{pattern}` is not a glob: {source}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// What globset found wrong.
        source: globset::Error,
    },
    /// More than [`MAX_FILES`] files are selected.
    #[error(
        "the patterns select more than {MAX_FILES} files; narrow them (for example `**/Cargo.lock` rather than `**`)"
    )]
    TooManyFiles,
    /// The walk passed [`MAX_ENTRIES`] entries.
    #[error(
        "the workspace has more than {MAX_ENTRIES} files and directories to look through; exclude large directories with a `!` pattern or hash fewer files"
    )]
    TooManyEntries,
    /// A directory or file could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The hash of the files under `root` that `patterns` select (see the module
/// documentation), or `""` when none is selected.
pub(crate) fn hash_files(root: &Path, patterns: &[String]) -> Result<String, HashFilesError> {
    let (include, exclude) = glob_sets(patterns)?;
    let files = select(root, &include, &exclude)?;
    if files.is_empty() {
        return Ok(String::new());
    }
    let mut all = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (rel, path) in &files {
        let io = |source| HashFilesError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut one = Sha256::new();
        one.update(rel.as_bytes());
        one.update([0u8]);
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            one.update(&buf[..n]);
        }
        all.update(one.finalize());
    }
    Ok(hex::encode(all.finalize()))
}

/// The include and exclude globs; refuses patterns that leave the root.
fn glob_sets(patterns: &[String]) -> Result<(GlobSet, GlobSet), HashFilesError> {
    let mut include = GlobSetBuilder::new();
    let mut exclude = GlobSetBuilder::new();
    for pattern in patterns {
        let (negated, glob) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        let glob = glob.strip_prefix("./").unwrap_or(glob);
        let absolute = glob.starts_with(['/', '\\'])
            || Path::new(glob).is_absolute()
            // `C:…`, a Windows drive, on any platform.
            || matches!(glob.as_bytes(), [d, b':', ..] if d.is_ascii_alphabetic());
        if absolute || glob.split(['/', '\\']).any(|segment| segment == "..") {
            return Err(HashFilesError::Escapes(pattern.clone()));
        }
        let compiled = GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|source| HashFilesError::BadPattern {
                pattern: pattern.clone(),
                source,
            })?;
        if negated {
            exclude.add(compiled);
        } else {
            include.add(compiled);
        }
    }
    let build = |b: GlobSetBuilder| {
        b.build().map_err(|source| HashFilesError::BadPattern {
            pattern: patterns.join(", "),
            source,
        })
    };
    Ok((build(include)?, build(exclude)?))
}

/// The selected files as (relative path with `/`, path to read), sorted by
/// the relative path.
fn select(
    root: &Path,
    include: &GlobSet,
    exclude: &GlobSet,
) -> Result<Vec<(String, PathBuf)>, HashFilesError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HashFilesError::Io { path, source }
    };
    // Symbolic links count only when they resolve inside the root, so
    // compare against the root's own resolved path.
    let real_root = std::fs::canonicalize(root).map_err(io(root))?;
    let mut out = Vec::new();
    let mut entries = 0usize;
    // (directory, its relative path with a trailing `/`, or "" for the root)
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(HashFilesError::TooManyEntries);
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            let rel = format!("{prefix}{name}");
            if kind.is_dir() {
                if name != ".git" {
                    pending.push((path, format!("{rel}/")));
                }
                continue;
            }
            if kind.is_symlink() {
                // A link that does not resolve, or leaves the root, or names a
                // directory is not followed.
                let target_is_inner_file = std::fs::canonicalize(&path)
                    .is_ok_and(|t| t.starts_with(&real_root) && t.is_file());
                if !target_is_inner_file {
                    continue;
                }
            } else if !kind.is_file() {
                continue;
            }
            if include.is_match(&rel) && !exclude.is_match(&rel) {
                if out.len() == MAX_FILES {
                    return Err(HashFilesError::TooManyFiles);
                }
                out.push((rel, path));
            }
        }
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, contents: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, contents).expect("write");
    }

    fn hash(root: &Path, patterns: &[&str]) -> Result<String, HashFilesError> {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        hash_files(root, &patterns)
    }

    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "Cargo.lock", "lock");
        write(dir.path(), "crates/a/Cargo.lock", "a");
        write(dir.path(), "crates/b/Cargo.lock", "b");
        write(dir.path(), "src/main.rs", "fn main() {}");
        write(dir.path(), ".git/Cargo.lock", "not hashed");
        dir
    }

    #[test]
    fn the_hash_is_documented_sha256_of_path_and_contents() {
        let dir = workspace();
        let got = hash(dir.path(), &["src/main.rs"]).expect("hash");
        let one = Sha256::digest(b"src/main.rs\0fn main() {}");
        assert_eq!(got, hex::encode(Sha256::digest(one)));
        assert_eq!(got.len(), 64);
    }

    #[test]
    fn same_files_same_hash_and_a_change_changes_it() {
        let (a, b) = (workspace(), workspace());
        let first = hash(a.path(), &["**/Cargo.lock"]).expect("hash");
        assert_eq!(first, hash(b.path(), &["**/Cargo.lock"]).expect("hash"));
        assert_eq!(first, hash(a.path(), &["**/Cargo.lock"]).expect("again"));
        write(b.path(), "crates/b/Cargo.lock", "b2");
        assert_ne!(first, hash(b.path(), &["**/Cargo.lock"]).expect("hash"));
        // A rename changes it too: the path is hashed.
        std::fs::rename(a.path().join("src/main.rs"), a.path().join("src/lib.rs")).expect("rename");
        assert_ne!(
            hash(a.path(), &["src/*.rs"]).expect("hash"),
            hash(b.path(), &["src/*.rs"]).expect("hash")
        );
    }

    #[test]
    fn nothing_selected_gives_the_empty_string() {
        let dir = workspace();
        assert_eq!(hash(dir.path(), &["**/*.toml"]).expect("hash"), "");
        // `*` stays in one directory, and `.git/Cargo.lock`, the only match
        // one directory deep, is never walked.
        assert_eq!(hash(dir.path(), &["*/Cargo.lock"]).expect("hash"), "");
    }

    #[test]
    fn a_bang_pattern_excludes() {
        let dir = workspace();
        let without_b = hash(dir.path(), &["**/Cargo.lock", "!crates/b/**"]).expect("hash");
        let listed = hash(dir.path(), &["Cargo.lock", "crates/a/Cargo.lock"]).expect("hash");
        assert_eq!(without_b, listed);
        assert_ne!(
            without_b,
            hash(dir.path(), &["**/Cargo.lock"]).expect("hash")
        );
        assert_eq!(
            hash(dir.path(), &["**/Cargo.lock", "!**"]).expect("hash"),
            ""
        );
    }

    #[test]
    fn patterns_that_leave_the_workspace_are_refused() {
        let dir = workspace();
        for pattern in ["../secret", "crates/../../x", "/etc/passwd", "!../x"] {
            let err = hash(dir.path(), &["**", pattern]).expect_err(pattern);
            assert!(
                matches!(&err, HashFilesError::Escapes(p) if p == pattern),
                "{pattern}: {err}"
            );
            assert!(err.to_string().contains("leaves the workspace"), "{err}");
        }
        let err = hash(dir.path(), &["a[b"]).expect_err("bad glob");
        assert!(
            err.to_string().starts_with("pattern `a[b` is not a glob"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn symbolic_links_do_not_lead_out_of_the_workspace() {
        let outside = tempfile::tempdir().expect("temp dir");
        write(outside.path(), "secret.txt", "secret");
        let dir = workspace();
        let before = hash(dir.path(), &["**"]).expect("hash");
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), dir.path().join("s.txt"))
            .expect("link");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).expect("link");
        assert_eq!(hash(dir.path(), &["**"]).expect("hash"), before);
        // A link to a file inside the workspace counts, with its target's contents.
        std::os::unix::fs::symlink(dir.path().join("Cargo.lock"), dir.path().join("l.lock"))
            .expect("link");
        let linked = hash(dir.path(), &["l.lock"]).expect("hash");
        let one = Sha256::digest(b"l.lock\0lock");
        assert_eq!(linked, hex::encode(Sha256::digest(one)));
    }
}
