//! The hardened `.ark` reader against an attack corpus generated here: each hostile
//! archive is refused with its own error variant, and no input panics the reader.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};

use arkline::ark::{
    ArchiveError, Ark, BuildInfo, ComponentEntry, FORMAT_VERSION, Manifest, ManifestError,
    ReadLimits, SecretKey, SignaturePolicy, SignatureStatus, StepEntry, write_ark,
    write_deterministic_zip,
};
use proptest::prelude::*;
use semver::{Version, VersionReq};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

const SCHEMA: &str = "schemas/run.schema.json";

fn manifest(host_api: &str) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        name: "victim".into(),
        version: Version::new(1, 2, 3),
        description: "test".into(),
        authors: vec![],
        license: None,
        host_api: VersionReq::parse(host_api).expect("req"),
        component: ComponentEntry {
            path: "component.wasm".into(),
            sha256: String::new(),
            size: 0,
        },
        steps: vec![StepEntry {
            id: "run".into(),
            description: "runs".into(),
            schema: SCHEMA.into(),
        }],
        capabilities: Default::default(),
        build: BuildInfo {
            packager: "test".into(),
            rustc: "rustc".into(),
            target: "wasm32-wasip2".into(),
            profile: "ark".into(),
            language: None,
        },
        files: vec![],
    }
}

fn valid_with(host_api: &str) -> Vec<u8> {
    let mut files = BTreeMap::new();
    files.insert(SCHEMA.to_owned(), br#"{"type":"object"}"#.to_vec());
    write_ark(manifest(host_api), b"\0asm\x0d\0\x01\0component", &files)
        .expect("writes")
        .0
}

fn valid() -> Vec<u8> {
    valid_with("^0.1")
}

/// The entries of the valid archive, to rebuild with a raw zip writer.
fn valid_entries() -> BTreeMap<String, Vec<u8>> {
    Ark::from_bytes(&valid()).expect("valid").entries()
}

/// A zip written with no safety checks: what an attacker can produce.
fn raw_zip(
    entries: &[(&str, &[u8])],
    extra: impl FnOnce(&mut ZipWriter<Cursor<Vec<u8>>>),
) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, data) in entries {
        zip.start_file(*name, opts).expect("start");
        zip.write_all(data).expect("write");
    }
    extra(&mut zip);
    zip.finish().expect("finish").into_inner()
}

fn valid_plus(name: &str, data: &[u8]) -> Vec<u8> {
    let entries = valid_entries();
    let mut list: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    list.push((name, data));
    raw_zip(&list, |_| {})
}

fn replace_first(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    bytes[at..at + to.len()].copy_from_slice(to);
}

fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(from.len()).position(|w| w == from) {
        bytes[i + at..i + at + to.len()].copy_from_slice(to);
        i += at + from.len();
    }
}

fn refused(bytes: &[u8]) -> ArchiveError {
    Ark::from_bytes(bytes).expect_err("hostile archive accepted")
}

#[test]
fn the_valid_archive_is_accepted() {
    let ark = Ark::from_bytes(&valid()).expect("valid");
    assert_eq!(ark.manifest.name, "victim");
}

#[test]
fn path_traversal_absolute_backslash_and_drive_names() {
    for name in [
        "../../etc/cron.d/evil",
        "/etc/passwd",
        "schemas\\..\\..\\x",
        "C:/Windows/x",
        "a/./b",
    ] {
        let err = refused(&valid_plus(name, b"x"));
        assert!(
            matches!(&err, ArchiveError::UnsafeName { name: n, .. } if n == name),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains(name),
            "message names the entry: {err}"
        );
    }
}

#[test]
fn symlink_entries() {
    let entries = valid_entries();
    let list: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let bytes = raw_zip(&list, |zip| {
        zip.add_symlink("link", "/etc/passwd", SimpleFileOptions::default())
            .expect("symlink");
    });
    assert!(matches!(refused(&bytes), ArchiveError::Symlink(n) if n == "link"));
}

#[test]
fn directory_entries() {
    let entries = valid_entries();
    let list: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let bytes = raw_zip(&list, |zip| {
        zip.add_directory("schemas/sub/", SimpleFileOptions::default())
            .expect("directory");
    });
    let err = refused(&bytes);
    assert!(
        matches!(&err, ArchiveError::NotRegularFile(n) if n == "schemas/sub/"),
        "{err}"
    );
}

#[test]
fn duplicate_names_behind_a_prefix_and_a_fake_end_record() {
    let mut bytes = valid_plus("schemas/run.schema.jsoX", br#"{"type":"object"}"#);
    replace_all(
        &mut bytes,
        b"schemas/run.schema.jsoX",
        b"schemas/run.schema.json",
    );
    // Bytes prepended to the archive shift every offset: zip readers cope, a naive
    // walk of the central directory does not.
    let mut shifted = b"#!/bin/sh\nexit 0\n\x50\x4b\x05\x06".to_vec();
    shifted.extend_from_slice(&bytes);
    let err = refused(&shifted);
    assert!(
        matches!(&err, ArchiveError::DuplicateEntry(_) | ArchiveError::Zip(_)),
        "{err}"
    );
}

#[test]
fn duplicate_names() {
    let mut bytes = valid_plus("schemas/run.schema.jsoX", br#"{"type":"object"}"#);
    replace_all(
        &mut bytes,
        b"schemas/run.schema.jsoX",
        b"schemas/run.schema.json",
    );
    let err = refused(&bytes);
    assert!(
        matches!(&err, ArchiveError::DuplicateEntry(n) if n == SCHEMA),
        "{err}"
    );
}

#[test]
fn local_header_name_differs_from_central_directory() {
    let mut bytes = valid();
    // The local header comes first in the file: rename the entry only there.
    replace_first(&mut bytes, b"component.wasm", b"component.evil");
    let err = refused(&bytes);
    assert!(
        matches!(&err, ArchiveError::LocalHeaderMismatch { central, local } if central == "component.wasm" && local == "component.evil"),
        "{err}"
    );
}

#[test]
fn deflate_bomb_is_stopped_while_streaming() {
    let zeros = vec![0u8; 8 << 20];
    let bytes = valid_plus("bomb.bin", &zeros);
    assert!(
        bytes.len() < 100 << 10,
        "a real bomb: {} bytes compressed",
        bytes.len()
    );
    let limits = ReadLimits {
        max_entry_bytes: 1 << 20,
        ..ReadLimits::default()
    };
    let err = Ark::from_bytes_with_limits(&bytes, limits).expect_err("bomb accepted");
    assert!(
        matches!(&err, ArchiveError::EntryTooLarge { name, .. } if name == "bomb.bin"),
        "{err}"
    );

    let limits = ReadLimits {
        max_total_bytes: 4 << 20,
        ..ReadLimits::default()
    };
    let err = Ark::from_bytes_with_limits(&bytes, limits).expect_err("bomb accepted");
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
}

#[test]
fn a_lying_declared_size_does_not_get_past_the_cap() {
    let zeros = vec![0u8; 4 << 20];
    let mut bytes = valid_plus("liar.bin", &zeros);
    // Declare 16 bytes in both headers; the stream still inflates to 4 MiB.
    let real = (4u32 << 20).to_le_bytes();
    replace_all(&mut bytes, &real, &16u32.to_le_bytes());
    let limits = ReadLimits {
        max_entry_bytes: 1 << 20,
        ..ReadLimits::default()
    };
    let err = Ark::from_bytes_with_limits(&bytes, limits).expect_err("liar accepted");
    // Either the cap or the zip layer's own size/CRC check stops it; never accepted.
    assert!(
        matches!(
            err,
            ArchiveError::EntryTooLarge { .. } | ArchiveError::Zip(_)
        ),
        "{err}"
    );
}

#[test]
fn unsupported_compression_method() {
    let mut bytes = valid_plus("odd.bin", b"data");
    // Compression method field: local header offset 8, central header offset 10.
    // Rewrite deflate (8) to bzip2 (12) for the entry named odd.bin in both headers.
    let name = b"odd.bin";
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(name.len()).position(|w| w == name) {
        let at = i + at;
        if at >= 30 && bytes[at - 30..at - 26] == [0x50, 0x4b, 0x03, 0x04] {
            bytes[at - 30 + 8] = 12;
        } else if at >= 46 && bytes[at - 46..at - 42] == [0x50, 0x4b, 0x01, 0x02] {
            bytes[at - 46 + 10] = 12;
        }
        i = at + name.len();
    }
    let err = refused(&bytes);
    assert!(
        matches!(&err, ArchiveError::UnsupportedCompression { name, .. } if name == "odd.bin"),
        "{err}"
    );
}

#[test]
fn too_many_entries() {
    let limits = ReadLimits {
        max_entries: 2,
        ..ReadLimits::default()
    };
    let err = Ark::from_bytes_with_limits(&valid(), limits).expect_err("accepted");
    assert!(
        matches!(err, ArchiveError::TooManyEntries { count: 3, limit: 2 }),
        "{err}"
    );
}

#[test]
fn tampered_component_byte() {
    let mut entries = valid_entries();
    entries.get_mut("component.wasm").expect("component")[9] ^= 0x20;
    let err = refused(&write_deterministic_zip(&entries, |_| false).expect("zip"));
    assert!(
        matches!(&err, ArchiveError::DigestMismatch { name, .. } if name == "component.wasm"),
        "{err}"
    );
}

#[test]
fn extra_unlisted_and_missing_listed_files() {
    let err = refused(&valid_plus("extra.txt", b"surprise"));
    assert!(matches!(err, ArchiveError::UnlistedEntry(n) if n == "extra.txt"));

    let mut entries = valid_entries();
    entries.remove(SCHEMA);
    let err = refused(&write_deterministic_zip(&entries, |_| false).expect("zip"));
    assert!(matches!(err, ArchiveError::MissingEntry(n) if n == SCHEMA));
}

#[test]
fn future_format_version() {
    let mut entries = valid_entries();
    let text = String::from_utf8(entries["ark.toml"].clone()).expect("utf8");
    entries.insert(
        "ark.toml".into(),
        text.replace("format_version = 1", "format_version = 2")
            .into_bytes(),
    );
    let err = refused(&write_deterministic_zip(&entries, |_| false).expect("zip"));
    assert!(
        matches!(
            err,
            ArchiveError::Manifest(ManifestError::UnknownFormatVersion { found: 2, .. })
        ),
        "{err}"
    );
}

#[test]
fn a_host_api_the_host_lacks() {
    let err = refused(&valid_with("^9.0"));
    assert!(
        matches!(&err, ArchiveError::UnsupportedHostApi { required, .. } if required == "^9.0"),
        "{err}"
    );
    assert!(
        err.to_string().contains("0.1.0"),
        "names what is served: {err}"
    );
}

#[test]
fn signatures_round_trip_and_bad_or_untrusted_ones_are_refused() {
    let key = SecretKey::generate().expect("key");
    let other = SecretKey::generate().expect("key");
    let signed = Ark::from_bytes(
        &Ark::from_bytes(&valid())
            .expect("valid")
            .signed(&key)
            .expect("signs"),
    )
    .expect("signed archive reads");

    let trusted = SignaturePolicy {
        trusted: vec![key.public_key()],
        require_signature: true,
    };
    assert_eq!(
        signed.verify_signature(&trusted).expect("trusted"),
        SignatureStatus::Trusted(key.public_key())
    );
    assert_eq!(
        signed
            .verify_signature(&SignaturePolicy::default())
            .expect("no policy"),
        SignatureStatus::Unverified(key.public_key())
    );

    let untrusted = SignaturePolicy {
        trusted: vec![other.public_key()],
        require_signature: true,
    };
    let err = signed.verify_signature(&untrusted).expect_err("untrusted");
    assert!(
        matches!(&err, ArchiveError::UntrustedKey(id) if *id == key.public_key().id()),
        "{err}"
    );

    // Unsigned: fine without a policy, refused when signatures are required.
    let unsigned = Ark::from_bytes(&valid()).expect("valid");
    assert_eq!(
        unsigned
            .verify_signature(&SignaturePolicy::default())
            .expect("ok"),
        SignatureStatus::Unsigned
    );
    assert!(matches!(
        unsigned.verify_signature(&trusted),
        Err(ArchiveError::Unsigned)
    ));

    // A signature over a different ark.toml: always refused, even with no policy.
    let mut entries = signed.entries();
    let text = String::from_utf8(entries["ark.toml"].clone()).expect("utf8");
    entries.insert(
        "ark.toml".into(),
        text.replace("description = \"test\"", "description = \"evil\"")
            .into_bytes(),
    );
    let forged = Ark::from_bytes(&write_deterministic_zip(&entries, |_| false).expect("zip"))
        .expect("reads");
    let err = forged
        .verify_signature(&SignaturePolicy::default())
        .expect_err("forged");
    assert!(
        matches!(&err, ArchiveError::BadSignature(m) if m.contains("altered")),
        "{err}"
    );

    // Garbage in ark.sig.
    let mut entries = signed.entries();
    entries.insert(
        "ark.sig".into(),
        b"algorithm = \"rsa\"\npublic_key = \"00\"\nsignature = \"00\"\n".to_vec(),
    );
    let garbage = Ark::from_bytes(&write_deterministic_zip(&entries, |_| false).expect("zip"))
        .expect("reads");
    assert!(matches!(
        garbage.verify_signature(&SignaturePolicy::default()),
        Err(ArchiveError::BadSignature(_))
    ));
}

#[test]
fn every_variant_has_its_own_message() {
    let mut messages = std::collections::BTreeSet::new();
    let corpus = [
        valid_plus("../x", b"x"),
        valid_plus("extra", b"x"),
        valid_with("^9"),
        b"not a zip".to_vec(),
    ];
    for bytes in &corpus {
        messages.insert(refused(bytes).to_string());
    }
    assert_eq!(messages.len(), corpus.len(), "{messages:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_mutations_never_panic_the_reader(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = valid();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = Ark::from_bytes(&bytes);
    }

    #[test]
    fn manifests_round_trip(
        name in "[a-z][a-z0-9_-]{0,20}",
        major in 0u64..100, minor in 0u64..100, patch in 0u64..100,
        description in "\\PC{0,40}",
        programs in proptest::collection::vec("[a-z]{1,8}", 0..4),
        cache in any::<bool>(),
    ) {
        let mut m = manifest("^0.1");
        m.name = name;
        m.version = Version::new(major, minor, patch);
        m.description = description;
        m.capabilities.process = programs;
        m.capabilities.cache = cache;
        m.component.sha256 = "0".repeat(64);
        let text = m.to_toml().expect("serialises");
        prop_assert_eq!(Manifest::from_toml(&text).expect("parses"), m);
    }
}

#[test]
fn bytes_before_or_after_the_zip_are_refused() {
    let zip = valid();
    // An .ark inside a multipart envelope, as a form upload would send it.
    let mut wrapped =
        b"--boundary\r\nContent-Disposition: form-data; name=\"ark\"; filename=\"a.ark\"\r\n\r\n"
            .to_vec();
    let head = wrapped.len() as u64;
    wrapped.extend_from_slice(&zip);
    wrapped.extend_from_slice(b"\r\n--boundary--\r\n");
    let err = refused(&wrapped);
    assert!(
        matches!(err, ArchiveError::StrayBytes { leading, trailing: 16 } if leading == head),
        "{err:?}"
    );
    assert!(err.to_string().contains("multipart"), "{err}");

    let mut prefixed = b"MZ-stub".to_vec();
    prefixed.extend_from_slice(&zip);
    assert!(matches!(
        refused(&prefixed),
        ArchiveError::StrayBytes {
            leading: 7,
            trailing: 0
        }
    ));

    let mut suffixed = zip.clone();
    suffixed.extend_from_slice(b"tail");
    assert!(matches!(
        refused(&suffixed),
        ArchiveError::StrayBytes {
            leading: 0,
            trailing: 4
        }
    ));
    // The exact file is still accepted.
    Ark::from_bytes(&zip).expect("the exact archive reads");
}
