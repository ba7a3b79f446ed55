//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! The archive readers check a CRC-32 per zip entry and a SHA-256 per archive
//! entry (pinned in `ark.toml` / `container.toml`). Random mutations of a zip's
//! bytes almost never survive both, so the archive targets take two kinds of
//! input:
//!
//! - **raw**: any bytes, handed to the reader as the archive itself. This is
//!   what an attacker controls; it exercises the zip layer (central directory,
//!   names, local headers, duplicates, compression methods, caps).
//! - **bundle**: text starting with the line `ARKFUZZ [flags]`, then entries,
//!   each introduced by a line `%%% <entry name>`:
//!
//!   ```text
//!   ARKFUZZ
//!   %%% ark.toml
//!   format_version = 1
//!   …
//!   %%% component.wasm
//!   …
//!   ```
//!
//!   The harness writes these entries as a valid deterministic zip (the same
//!   writer `cargo ark` uses) after filling in the digests and sizes the
//!   manifest pins for entries that are present, so the fuzzer reaches
//!   the checks behind the digests: manifest semantics, step schemas, nested
//!   bizes, signature policies, pipelines and their step configs. Flags:
//!   `n` leaves the digests as written; `s` signs an `.ark` with
//!   [`fuzz_secret_key`] (a nested `.ark` too, so container engines can trust
//!   [`fuzz_public_key`]). An entry named `*.ark` whose content is itself a
//!   bundle is built recursively (with its own flags line); its entries are
//!   introduced by `%%%% ` (one `%` more per level), so they stay inside it.

use std::collections::BTreeMap;

use arkline::ark::{Ark, ReadLimits, SecretKey, sha256_hex, write_deterministic_zip};

/// The first line of a bundle input starts with this.
pub const BUNDLE_MAGIC: &[u8] = b"ARKFUZZ";

/// The secret key bundles with the `s` flag are signed with (test key, public).
pub const FUZZ_SECRET_KEY: &str =
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

/// Its public key, as `trusted_keys` in a `container.toml` names it.
pub fn fuzz_public_key() -> String {
    fuzz_secret_key().public_key().to_string()
}

/// The key bundles are signed with.
pub fn fuzz_secret_key() -> SecretKey {
    FUZZ_SECRET_KEY.parse().expect("the fuzz key is valid hex")
}

/// Small limits for the readers: big enough for every seed, small enough that
/// a run never spends its time (or memory) decompressing.
pub const LIMITS: ReadLimits = ReadLimits {
    max_entries: 64,
    max_entry_bytes: 1 << 20,
    max_total_bytes: 4 << 20,
};

/// A parsed bundle: flags and entries (a repeated name keeps the last).
pub struct Bundle {
    /// Characters after `ARKFUZZ` on the first line.
    pub flags: String,
    /// Entry name → content.
    pub entries: BTreeMap<String, Vec<u8>>,
}

/// Parses a bundle whose entry headers are `%%% ` (`depth` 0), `%%%% ` (1)…,
/// or `None` when `data` is not one (then it is a raw input).
pub fn parse_bundle(data: &[u8], depth: usize) -> Option<Bundle> {
    let marker = [&b"%".repeat(3 + depth)[..], b" "].concat();
    let separator = [&b"\n"[..], &marker].concat();
    let rest = data.strip_prefix(BUNDLE_MAGIC)?;
    let (flags, mut body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let flags = String::from_utf8_lossy(flags).trim().to_owned();
    let mut entries = BTreeMap::new();
    // Skip anything before the first header.
    if !body.starts_with(&marker) {
        match find(body, &separator) {
            Some(i) => body = &body[i + 1..],
            None => return Some(Bundle { flags, entries }),
        }
    }
    while let Some(after) = body.strip_prefix(&marker[..]) {
        let (name, content_and_rest) = match after.iter().position(|&b| b == b'\n') {
            Some(i) => (&after[..i], &after[i + 1..]),
            None => (after, &[][..]),
        };
        let (content, next) = match find(content_and_rest, &separator) {
            Some(i) => (&content_and_rest[..i], &content_and_rest[i + 1..]),
            None => (content_and_rest, &[][..]),
        };
        entries.insert(String::from_utf8_lossy(name).into_owned(), content.to_vec());
        body = next;
    }
    Some(Bundle { flags, entries })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sets `sha256` and `size` of a `{path, sha256, size}` table to those of the
/// entry it names, when that entry is present.
fn pin(table: &mut toml::Table, entries: &BTreeMap<String, Vec<u8>>) {
    let Some(data) = table
        .get("path")
        .and_then(toml::Value::as_str)
        .and_then(|p| entries.get(p))
    else {
        return;
    };
    table.insert("sha256".into(), toml::Value::String(sha256_hex(data)));
    table.insert("size".into(), toml::Value::Integer(data.len() as i64));
}

fn pin_list(list: Option<&mut toml::Value>, entries: &BTreeMap<String, Vec<u8>>) {
    if let Some(toml::Value::Array(items)) = list {
        for item in items {
            if let toml::Value::Table(t) = item {
                pin(t, entries);
            }
        }
    }
}

/// Rewrites the manifest entry `manifest` so it pins the present entries:
/// `component` and `files` (`ark.toml`), `files` and `engines[].pipelines`
/// (`container.toml`). A manifest that is not a TOML table is left as is.
pub fn fix_digests(entries: &mut BTreeMap<String, Vec<u8>>, manifest: &str) {
    let Some(text) = entries
        .get(manifest)
        .and_then(|b| std::str::from_utf8(b).ok())
    else {
        return;
    };
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return;
    };
    if let Some(toml::Value::Table(component)) = table.get_mut("component") {
        pin(component, entries);
    }
    pin_list(table.get_mut("files"), entries);
    if let Some(toml::Value::Array(engines)) = table.get_mut("engines") {
        for engine in engines {
            if let toml::Value::Table(engine) = engine {
                pin_list(engine.get_mut("pipelines"), entries);
            }
        }
    }
    if let Ok(text) = toml::to_string(&table) {
        entries.insert(manifest.to_owned(), text.into_bytes());
    }
}

/// Writes a bundle as an archive whose manifest is `manifest`: nested bundles
/// first (entries named `*.ark`), then the digests, then the zip, then
/// (flag `s`) the signature. `None` when the entries cannot be written (e.g.
/// a name the writer refuses) or, for a signed archive, when it does not read.
pub fn build_archive(bundle: Bundle, manifest: &str, depth: usize) -> Option<Vec<u8>> {
    let Bundle { flags, mut entries } = bundle;
    if depth < 2 {
        for (name, data) in entries.iter_mut() {
            if name.ends_with(".ark")
                && let Some(nested) = parse_bundle(data, depth + 1)
            {
                *data = build_archive(nested, "ark.toml", depth + 1)?;
            }
        }
    }
    if !flags.contains('n') {
        fix_digests(&mut entries, manifest);
    }
    let deflate = flags.contains('d');
    let bytes =
        write_deterministic_zip(&entries, |name| !deflate || name.ends_with(".ark")).ok()?;
    if flags.contains('s') {
        let ark = Ark::from_bytes_with_limits(&bytes, LIMITS).ok()?;
        return ark.signed(&fuzz_secret_key()).ok();
    }
    Some(bytes)
}

/// The archive bytes for an input: a bundle built, or the raw bytes.
pub fn archive_bytes(data: &[u8], manifest: &str) -> Option<Vec<u8>> {
    match parse_bundle(data, 0) {
        Some(bundle) => build_archive(bundle, manifest, 0),
        None => Some(data.to_vec()),
    }
}

/// Whether `ARKLINE_FUZZ_DEBUG` is set: the targets then say on stderr what
/// each input came to (for checking that seeds reach what they should).
pub fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("ARKLINE_FUZZ_DEBUG").is_some())
}
