//! Secrets of an engine: values encrypted at rest, and masking of those values
//! in logs.
//!
//! - [`SecretKey`] is the node's XChaCha20-Poly1305 key, kept in a file of its
//!   own (mode 0600) next to the store, never in the store.
//! - [`Secrets`] reads and writes the [`Secret`] objects of one engine. Each value
//!   is encrypted with the engine, secret and key name as authenticated data, so a
//!   ciphertext copied to another secret or engine does not decrypt.
//! - [`Masker`] replaces secret values with `***` in text and JSON.
//!
//! (The module's tests begin with a worked example: `example::secrets_and_masker`.)

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::model::{Ciphertext, ObjectMeta, Secret, SecretSpec};
use crate::store::{Api, DeleteOptions, LabelSelector, Store, StoreError};

/// The data key that [`Secrets::set`], [`Secrets::get`] and [`Secrets::resolve`]
/// use: a single-valued secret keeps its value under this key.
pub const VALUE_KEY: &str = "value";

/// Bytes of an XChaCha20 nonce.
const NONCE_LEN: usize = 24;
/// Bytes of a Poly1305 tag.
const TAG_LEN: usize = 16;
/// Longest secret name; expressions reference it as `secrets.<name>`.
const MAX_NAME_LEN: usize = 63;
/// Longest data key of a multi-key secret.
const MAX_DATA_KEY_LEN: usize = 253;
/// How many times a write is retried after losing a compare-and-swap race.
const WRITE_ATTEMPTS: usize = 5;
/// Largest key file read; a real one is 65 bytes.
const KEY_FILE_LIMIT: u64 = 4096;

/// Why a secret operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The key file (or its directory) could not be read or written.
    #[error(
        "cannot use secret key file {path}: {source}; check that its directory exists \
         and that arkline may read and write it"
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The key file exists but cannot be used.
    #[error("secret key file {path} is unusable: {problem}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        problem: String,
    },

    /// The operating system gave no randomness for a key or nonce.
    #[error(
        "no randomness available from the operating system to {purpose}: {message}; \
         check that /dev/urandom (or getrandom(2)) is available to arkline"
    )]
    Random {
        /// What the randomness was for.
        purpose: &'static str,
        /// The operating system's error.
        message: String,
    },

    /// A value could not be encrypted (only a value of hundreds of GiB can fail).
    #[error("cannot encrypt secret value `{location}` of {len} bytes: store a smaller value")]
    Encrypt {
        /// Where the value would live: `engine/secret/key`.
        location: String,
        /// Its size in bytes.
        len: usize,
    },

    /// A stored value could not be decrypted.
    #[error("cannot decrypt secret value `{location}`: {message}")]
    Decrypt {
        /// Where the value lives: `engine/secret/key` (its authenticated data).
        location: String,
        /// What is wrong, and what to do.
        message: String,
    },

    /// A value decrypted, but is not UTF-8 text.
    #[error(
        "secret value `{location}` is not UTF-8 text: it was not written by arkline; \
         set the secret again"
    )]
    NotUtf8 {
        /// Where the value lives: `engine/secret/key`.
        location: String,
    },

    /// The store failed.
    #[error("cannot read or write secrets in the store: {0}")]
    Store(#[from] StoreError),

    /// A secret name that expressions could not reference.
    #[error(
        "invalid secret name `{0}`: use 1 to 63 ASCII letters, digits, `_` or `-`, \
         starting with a letter (pipelines reference it as `secrets.<name>`)"
    )]
    InvalidName(String),

    /// The data given to `Secrets::set_data` cannot be stored.
    #[error("invalid data for secret `{name}`: {problem}")]
    InvalidData {
        /// The secret.
        name: String,
        /// What is wrong, and what to do.
        problem: String,
    },

    /// A secret a step references does not exist.
    #[error(
        "secret `{name}` does not exist in engine `{engine}`: create it in that engine \
         (Secrets::set) or stop referencing `secrets.{name}`"
    )]
    Missing {
        /// The engine.
        engine: String,
        /// The secret.
        name: String,
    },

    /// A multi-key secret was read as a single value.
    #[error(
        "secret `{name}` in engine `{engine}` has no `value` key (its keys: {}): \
         give it a single value with Secrets::set, or read its keys with Secrets::get_data",
        keys.join(", ")
    )]
    NoValue {
        /// The engine.
        engine: String,
        /// The secret.
        name: String,
        /// The keys it has.
        keys: Vec<String>,
    },
}

/// A 32-byte XChaCha20-Poly1305 key that encrypts secret values at rest.
///
/// Every value gets a fresh random 24-byte nonce, which is large enough that
/// random nonces never repeat in practice. `Debug` prints only the [id](Self::id).
pub struct SecretKey {
    bytes: Zeroizing<[u8; 32]>,
    id: String,
}

impl SecretKey {
    /// The key in the file at `path`, creating the file with a new random key when
    /// it does not exist.
    ///
    /// A new file is written under a temporary name (mode 0600, fsynced) and then
    /// hard-linked to `path`, so `path` never holds a partial key and two processes
    /// starting at once agree on one key: the loser of the link reads the winner's
    /// file. An existing file is refused when group or others may access it, or when
    /// it does not hold exactly 64 hex digits.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, SecretError> {
        match Self::load(path) {
            Err(SecretError::Io { ref source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Self::create(path)
            }
            other => other,
        }
    }

    /// A key given by the embedder.
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        SecretKey {
            bytes: Zeroizing::new(bytes),
            id,
        }
    }

    /// A new random key.
    pub fn generate() -> Result<SecretKey, SecretError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(&mut *bytes, "generate a secret key")?;
        Ok(Self::from_bytes(*bytes))
    }

    /// The key's id: the first 16 hex digits of the SHA-256 of the key. Not secret;
    /// recorded in each [`Secret`]'s status to tell which key its values need.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext` bound to `aad`, the value's location (by convention
    /// `"{engine}/{secret}/{key}"`): the result decrypts only with the same `aad`.
    /// Returns base64 of `nonce || ciphertext || tag`.
    pub fn encrypt(&self, aad: &str, plaintext: &[u8]) -> Result<Ciphertext, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce, "make a nonce")?;
        let sealed = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Encrypt {
                location: aad.to_owned(),
                len: plaintext.len(),
            })?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(Ciphertext(BASE64.encode(out)))
    }

    /// Decrypts a value written by [`SecretKey::encrypt`] with the same `aad`.
    pub fn decrypt(
        &self,
        aad: &str,
        value: &Ciphertext,
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let fail = |message: String| SecretError::Decrypt {
            location: aad.to_owned(),
            message,
        };
        let raw = BASE64.decode(value.0.as_bytes()).map_err(|e| {
            fail(format!(
                "the stored value is not base64 ({e}): it was damaged or edited by hand; \
                 set the secret again"
            ))
        })?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(fail(format!(
                "the stored value is {} bytes, shorter than a nonce and tag ({} bytes): \
                 it was damaged or edited by hand; set the secret again",
                raw.len(),
                NONCE_LEN + TAG_LEN
            )));
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                fail(format!(
                    "authentication failed: was it encrypted with another key? this key's \
                     id is {}; otherwise the value was copied from another secret or engine, \
                     or tampered with; start arkline with the key it was written with, or \
                     set the secret again",
                    self.id
                ))
            })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&*self.bytes))
    }

    /// Reads an existing key file (64 hex digits, not readable by group or
    /// others), as [`SecretKey::load_or_create`] does; a missing file is an
    /// error, not a new key.
    ///
    /// # Errors
    ///
    /// [`SecretError::Io`] when the file cannot be read, [`SecretError::KeyFile`]
    /// when group or others may access it or it does not hold a key.
    pub fn load(path: &Path) -> Result<SecretKey, SecretError> {
        let io_err = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        let problem = |problem: String| SecretError::KeyFile {
            path: path.to_owned(),
            problem,
        };
        let file = fs::File::open(path).map_err(io_err)?;
        // Check the opened file, not the path, so the checks and the read see the
        // same file.
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(problem(
                "it is not a regular file: point arkline at the key file itself".into(),
            ));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(problem(format!(
                    "its permissions {mode:03o} let group or others access it; \
                     run `chmod 600 {}` and check who may have read it",
                    path.display()
                )));
            }
        }
        let mut text = Zeroizing::new(String::new());
        file.take(KEY_FILE_LIMIT)
            .read_to_string(&mut text)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    problem(format!("it is not text: {}", NOT_A_KEY_FIX))
                } else {
                    io_err(e)
                }
            })?;
        let digits = text.trim_end();
        if digits.len() != 64 {
            return Err(problem(format!(
                "it holds {} characters where a key is 64 hex digits: {}",
                digits.len(),
                NOT_A_KEY_FIX
            )));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digits, &mut *bytes).map_err(|_| {
            problem(format!(
                "it holds characters that are not hex digits: {NOT_A_KEY_FIX}"
            ))
        })?;
        Ok(Self::from_bytes(*bytes))
    }

    fn create(path: &Path) -> Result<SecretKey, SecretError> {
        let Some(file_name) = path.file_name() else {
            return Err(SecretError::KeyFile {
                path: path.to_owned(),
                problem: "the path names no file: give a file path such as <data dir>/secret.key"
                    .into(),
            });
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let key = Self::generate()?;
        let mut suffix = [0u8; 8];
        fill_random(&mut suffix, "name a temporary key file")?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            file_name.to_string_lossy(),
            hex::encode(suffix)
        ));
        // Hex-encoded in place so no unzeroed copy of the key is left behind.
        let mut line = Zeroizing::new([b'\n'; 65]);
        hex::encode_to_slice(key.bytes.as_slice(), &mut line[..64])
            .expect("64 bytes hold 32 bytes as hex");
        if let Err(source) = write_private(&tmp, line.as_slice()) {
            let _ = fs::remove_file(&tmp);
            return Err(SecretError::Io { path: tmp, source });
        }
        // Linking fails when `path` exists, so of two processes creating the key at
        // once exactly one wins, and `path` is complete from its first moment.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(dir).map_err(|source| SecretError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
                tracing::info!(path = %path.display(), key_id = key.id(), "created secret key");
                Ok(key)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(source) => Err(SecretError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

const NOT_A_KEY_FIX: &str = "restore the key file from a backup (values encrypted with a lost \
     key cannot be decrypted), or, if no secrets were ever stored with it, delete it so \
     arkline creates a new key";

fn fill_random(buf: &mut [u8], purpose: &'static str) -> Result<(), SecretError> {
    getrandom::fill(buf).map_err(|e| SecretError::Random {
        purpose,
        message: e.to_string(),
    })
}

/// Creates `path` (which must not exist) readable by its owner only, writes
/// `bytes` and fsyncs it.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a directory's entries durable (a no-op where directories cannot be
/// opened as files).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The secrets of one engine, over the store: values are encrypted with the node's
/// [`SecretKey`] before they reach the store and decrypted when read.
#[derive(Debug, Clone)]
pub struct Secrets {
    api: Api<Secret>,
    engine: String,
    key: Arc<SecretKey>,
}

impl Secrets {
    /// Access to the secrets of `engine` in `store`, encrypted with `key`.
    pub fn new(store: Arc<dyn Store>, engine: impl Into<String>, key: Arc<SecretKey>) -> Self {
        Self {
            api: Api::new(store),
            engine: engine.into(),
            key,
        }
    }

    /// Sets secret `name` to the single value `value` (data key [`VALUE_KEY`]),
    /// creating the secret or replacing all of its keys.
    pub async fn set(&self, name: &str, value: &str) -> Result<(), SecretError> {
        self.set_data(
            name,
            BTreeMap::from([(VALUE_KEY.to_owned(), value.to_owned())]),
        )
        .await
    }

    /// Sets secret `name` to `data` (key → plaintext), creating the secret or
    /// replacing all of its keys. Keys are 1 to 253 ASCII letters, digits, `_`,
    /// `-` or `.`. The plaintexts are zeroed once encrypted.
    pub async fn set_data(
        &self,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> Result<(), SecretError> {
        let encrypted = self.encrypt_all(name, data)?;
        let key_id = self.key.id();
        let mut attempt = 1;
        loop {
            let race = match self.api.get(&self.engine, name).await? {
                None => {
                    let mut secret = Secret::new(
                        ObjectMeta::new(&self.engine, name),
                        SecretSpec {
                            data: encrypted.clone(),
                        },
                    );
                    secret.status.key_id = key_id.to_owned();
                    match self.api.create(&secret).await {
                        Ok(_) => return Ok(()),
                        // Created by someone else since the get: update it instead.
                        Err(e @ StoreError::AlreadyExists { .. }) => e,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(mut secret) => {
                    secret.spec.data = encrypted.clone();
                    match self.api.update(&secret).await {
                        Ok(updated) => return self.record_key_id(updated).await,
                        Err(e) if e.is_conflict() => e,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if attempt == WRITE_ATTEMPTS {
                return Err(race.into());
            }
            attempt += 1;
        }
    }

    /// The value of secret `name` (its [`VALUE_KEY`]), or `None` when the secret
    /// does not exist. A secret without that key is [`SecretError::NoValue`].
    pub async fn get(&self, name: &str) -> Result<Option<Zeroizing<String>>, SecretError> {
        match self.api.get(&self.engine, name).await? {
            None => Ok(None),
            Some(secret) => self.value_of(&secret).map(Some),
        }
    }

    /// Every key of secret `name` with its plaintext, or `None` when the secret
    /// does not exist.
    pub async fn get_data(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Zeroizing<String>>>, SecretError> {
        let Some(secret) = self.api.get(&self.engine, name).await? else {
            return Ok(None);
        };
        secret
            .spec
            .data
            .iter()
            .map(|(key, value)| Ok((key.clone(), self.decrypt_one(&secret, key, value)?)))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Deletes secret `name`; `false` when it did not exist.
    pub async fn delete(&self, name: &str) -> Result<bool, SecretError> {
        match self
            .api
            .delete(&self.engine, name, &DeleteOptions::default())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The names of the engine's secrets, sorted.
    pub async fn names(&self) -> Result<Vec<String>, SecretError> {
        let (secrets, _) = self
            .api
            .list(Some(&self.engine), LabelSelector::everything())
            .await?;
        let mut names: Vec<String> = secrets.into_iter().map(|s| s.metadata.name).collect();
        names.sort();
        Ok(names)
    }

    /// The values of exactly the secrets in `names` (one step's references), by
    /// name. Fails with [`SecretError::Missing`] when one does not exist.
    pub async fn resolve(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Zeroizing<String>>, SecretError> {
        let mut values = BTreeMap::new();
        for name in names {
            let Some(secret) = self.api.get(&self.engine, name).await? else {
                return Err(SecretError::Missing {
                    engine: self.engine.clone(),
                    name: name.clone(),
                });
            };
            values.insert(name.clone(), self.value_of(&secret)?);
        }
        Ok(values)
    }

    fn encrypt_all(
        &self,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Ciphertext>, SecretError> {
        // Zero every plaintext on every path out of here, errors included.
        let data: Vec<(String, Zeroizing<String>)> = data
            .into_iter()
            .map(|(k, v)| (k, Zeroizing::new(v)))
            .collect();
        if !valid_name(name) {
            return Err(SecretError::InvalidName(name.to_owned()));
        }
        if data.is_empty() {
            return Err(SecretError::InvalidData {
                name: name.to_owned(),
                problem: "it has no keys: give at least one key and value".into(),
            });
        }
        let mut encrypted = BTreeMap::new();
        for (key, value) in &data {
            if !valid_data_key(key) {
                return Err(SecretError::InvalidData {
                    name: name.to_owned(),
                    problem: format!(
                        "key `{key}` is not 1 to {MAX_DATA_KEY_LEN} ASCII letters, digits, \
                         `_`, `-` or `.`: rename it"
                    ),
                });
            }
            let aad = self.aad(name, key);
            encrypted.insert(key.clone(), self.key.encrypt(&aad, value.as_bytes())?);
        }
        Ok(encrypted)
    }

    /// Records this node's key id in the status when an update changed the key the
    /// values are encrypted with. A lost race here means another writer has set the
    /// secret since, and its status describes its own values.
    async fn record_key_id(&self, mut secret: Secret) -> Result<(), SecretError> {
        if secret.status.key_id == self.key.id() {
            return Ok(());
        }
        secret.status.key_id = self.key.id().to_owned();
        match self.api.update_status(&secret).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn value_of(&self, secret: &Secret) -> Result<Zeroizing<String>, SecretError> {
        let Some(value) = secret.spec.data.get(VALUE_KEY) else {
            return Err(SecretError::NoValue {
                engine: self.engine.clone(),
                name: secret.metadata.name.clone(),
                keys: secret.spec.data.keys().cloned().collect(),
            });
        };
        self.decrypt_one(secret, VALUE_KEY, value)
    }

    fn decrypt_one(
        &self,
        secret: &Secret,
        key: &str,
        value: &Ciphertext,
    ) -> Result<Zeroizing<String>, SecretError> {
        let aad = self.aad(&secret.metadata.name, key);
        let mut bytes = match self.key.decrypt(&aad, value) {
            Ok(bytes) => bytes,
            Err(SecretError::Decrypt { location, message })
                if !secret.status.key_id.is_empty() && secret.status.key_id != self.key.id() =>
            {
                return Err(SecretError::Decrypt {
                    location,
                    message: format!(
                        "it was encrypted with key {} but this node's key is {}: start \
                         arkline with the key file whose id is {}, or set the secret again \
                         ({message})",
                        secret.status.key_id,
                        self.key.id(),
                        secret.status.key_id
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        match String::from_utf8(std::mem::take(&mut *bytes)) {
            Ok(text) => Ok(Zeroizing::new(text)),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(SecretError::NotUtf8 { location: aad })
            }
        }
    }

    fn aad(&self, name: &str, key: &str) -> String {
        format!("{}/{name}/{key}", self.engine)
    }
}

/// `[A-Za-z][A-Za-z0-9_-]{0,62}`: referenceable as `secrets.<name>`.
fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Data keys never contain `/`, so the authenticated data `engine/name/key` names
/// one location only.
fn valid_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_DATA_KEY_LEN
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Replaces secret values with `***` in log lines and JSON.
///
/// Every byte that belongs to an occurrence of any value is masked, so values that
/// contain or overlap each other are hidden whole. A multi-line value also masks
/// each of its lines that is not blank, because logs are masked one line at a
/// time. Text without a value is returned borrowed, without allocating.
#[derive(Clone, Default)]
pub struct Masker {
    /// Distinct non-empty values, longest first.
    values: Vec<Zeroizing<String>>,
    /// Bit set of the first bytes of `values`, to skip most positions cheaply.
    first_bytes: [u64; 4],
}

impl Masker {
    /// A masker for `values`; empty values are ignored.
    pub fn new(values: impl IntoIterator<Item = impl AsRef<str>>) -> Masker {
        let mut all: Vec<Zeroizing<String>> = Vec::new();
        for value in values {
            let value = value.as_ref();
            if value.is_empty() {
                continue;
            }
            if value.contains(['\n', '\r']) {
                all.extend(
                    value
                        .lines()
                        .filter(|line| !line.trim().is_empty())
                        .map(|line| Zeroizing::new(line.to_owned())),
                );
            }
            all.push(Zeroizing::new(value.to_owned()));
        }
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        let mut first_bytes = [0u64; 4];
        for value in &all {
            let b = value.as_bytes()[0];
            first_bytes[usize::from(b >> 6)] |= 1 << (b & 63);
        }
        Masker {
            values: all,
            first_bytes,
        }
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every occurrence of every value replaced by `***`; borrowed when
    /// no value occurs.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.values.is_empty() {
            return Cow::Borrowed(text);
        }
        let bytes = text.as_bytes();
        let mut out: Option<String> = None;
        // `text[..copied]` has been written to `out` (or is before any mask).
        let mut copied = 0;
        // The masked span being extended: every position inside it is still
        // checked, so an occurrence overlapping its end extends it.
        let mut span: Option<(usize, usize)> = None;
        for i in 0..bytes.len() {
            if let Some((start, end)) = span
                && i >= end
            {
                let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
                out.push_str(&text[copied..start]);
                out.push_str("***");
                copied = end;
                span = None;
            }
            let b = bytes[i];
            if self.first_bytes[usize::from(b >> 6)] & (1 << (b & 63)) == 0 {
                continue;
            }
            // Values are longest first, so the first match is the longest. A match
            // starts and ends on char boundaries: both strings are UTF-8 and the
            // value's first byte is never a continuation byte.
            if let Some(len) = self
                .values
                .iter()
                .map(|v| v.as_bytes())
                .find(|v| bytes[i..].starts_with(v))
                .map(<[u8]>::len)
            {
                span = Some(match span {
                    Some((start, end)) => (start, end.max(i + len)),
                    None => (i, i + len),
                });
            }
        }
        if let Some((start, end)) = span {
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[copied..start]);
            out.push_str("***");
            copied = end;
        }
        match out {
            None => Cow::Borrowed(text),
            Some(mut out) => {
                out.push_str(&text[copied..]);
                Cow::Owned(out)
            }
        }
    }

    #[cfg(test)]
    /// Masks every string in `value`, object keys included, in place. Keys that
    /// become equal once masked keep the last value.
    pub fn mask_json(&self, value: &mut serde_json::Value) {
        if self.values.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(masked) = self.mask(s) {
                    *s = masked;
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    self.mask_json(item);
                }
            }
            serde_json::Value::Object(map) => {
                for item in map.values_mut() {
                    self.mask_json(item);
                }
                if map.keys().any(|k| matches!(self.mask(k), Cow::Owned(_))) {
                    for (key, item) in std::mem::take(map) {
                        map.insert(self.mask(&key).into_owned(), item);
                    }
                }
            }
            serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            }
        }
    }
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("values", &self.values.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use proptest::prelude::*;

    use super::*;
    use crate::model::{DynamicObject, Resource as _};
    use crate::store::{
        DeleteOutcome, ListQuery, MemoryStore, ObjectList, ObjectRef, Revision, WatchStream,
    };

    fn key(byte: u8) -> Arc<SecretKey> {
        Arc::new(SecretKey::from_bytes([byte; 32]))
    }

    fn secrets(store: &Arc<dyn Store>, engine: &str, key: &Arc<SecretKey>) -> Secrets {
        Secrets::new(store.clone(), engine, key.clone())
    }

    fn memory() -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }

    async fn stored(store: &Arc<dyn Store>, engine: &str, name: &str) -> DynamicObject {
        store
            .get(&ObjectRef::new(Secret::KIND, engine, name))
            .await
            .expect("get")
            .expect("the secret is stored")
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn key_file_is_created_private_and_reloads_to_the_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret.key");
        let created = SecretKey::load_or_create(&path).expect("creates");
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.len(), 65, "64 hex digits and a newline: {text:?}");
        assert!(text.ends_with('\n'));
        assert_eq!(created.id().len(), 16);

        let reloaded = SecretKey::load_or_create(&path).expect("reloads");
        assert_eq!(reloaded.id(), created.id());
        let sealed = created.encrypt("e/s/value", b"x").expect("encrypt");
        assert_eq!(
            &**reloaded.decrypt("e/s/value", &sealed).expect("decrypt"),
            b"x"
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["secret.key"], "no temporary file is left behind");
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret.key");
        let barrier = std::sync::Barrier::new(8);
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        SecretKey::load_or_create(&path)
                            .expect("loads or creates")
                            .id()
                            .to_owned()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
        assert_eq!(SecretKey::load_or_create(&path).expect("load").id(), ids[0]);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_others_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret.key");
        SecretKey::load_or_create(&path).expect("creates");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = SecretKey::load_or_create(&path).expect_err("refused");
        assert!(matches!(err, SecretError::KeyFile { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("644"), "{message}");
        assert!(
            message.contains(&format!("chmod 600 {}", path.display())),
            "{message}"
        );
    }

    #[test]
    fn key_files_that_hold_no_key_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (content, expected) in [
            (&b""[..], "0 characters"),
            (b"abc\n", "3 characters"),
            (&[b'z'; 64][..], "not hex digits"),
            (&[0xff; 64][..], "not text"),
        ] {
            let path = dir.path().join("secret.key");
            let _ = fs::remove_file(&path);
            write_private(&path, content).expect("write");
            let err = SecretKey::load_or_create(&path).expect_err("refused");
            let message = err.to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("restore the key file"), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert_eq!(fs::read(&path).expect("read"), content, "never overwritten");
        }
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("secret.key");
        let err = SecretKey::load_or_create(&path).expect_err("fails");
        assert!(matches!(err, SecretError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("directory exists"), "{err}");
    }

    #[test]
    fn key_id_is_a_sha256_prefix_and_debug_hides_the_key() {
        let key = SecretKey::from_bytes([0; 32]);
        // sha256 of 32 zero bytes is 66687aadf862bd77…
        assert_eq!(key.id(), "66687aadf862bd77");
        let key = SecretKey::from_bytes([0xab; 32]);
        let debug = format!("{key:?}");
        assert!(debug.contains(key.id()), "{debug}");
        assert!(!debug.contains("abab"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
        assert_ne!(
            SecretKey::generate().expect("random").id(),
            SecretKey::generate().expect("random").id()
        );
    }

    #[test]
    fn encrypt_decrypt_round_trip_with_fresh_nonces() {
        let key = SecretKey::generate().expect("key");
        let a = key.encrypt("ci/token/value", b"hunter2").expect("encrypt");
        let b = key.encrypt("ci/token/value", b"hunter2").expect("encrypt");
        assert_ne!(a, b, "each value gets its own nonce");
        let raw = BASE64.decode(&a.0).expect("base64");
        assert_eq!(raw.len(), NONCE_LEN + 7 + TAG_LEN);
        assert_eq!(
            &**key.decrypt("ci/token/value", &a).expect("decrypt"),
            b"hunter2"
        );
        let empty = key.encrypt("ci/token/value", b"").expect("encrypt");
        assert!(
            key.decrypt("ci/token/value", &empty)
                .expect("decrypt")
                .is_empty()
        );
    }

    #[test]
    fn wrong_aad_wrong_key_and_tampering_fail_to_decrypt() {
        let key = SecretKey::from_bytes([1; 32]);
        let sealed = key.encrypt("ci/token/value", b"hunter2").expect("encrypt");

        let err = key
            .decrypt("cd/token/value", &sealed)
            .expect_err("other engine");
        assert!(matches!(err, SecretError::Decrypt { .. }), "{err:?}");
        assert!(err.to_string().contains("cd/token/value"), "{err}");

        let other = SecretKey::from_bytes([2; 32]);
        let err = other
            .decrypt("ci/token/value", &sealed)
            .expect_err("other key");
        let message = err.to_string();
        assert!(message.contains("another key"), "{message}");
        assert!(message.contains(other.id()), "{message}");

        let mut raw = BASE64.decode(&sealed.0).expect("base64");
        for i in [0, NONCE_LEN, raw.len() - 1] {
            raw[i] ^= 1;
            let tampered = Ciphertext(BASE64.encode(&raw));
            assert!(
                key.decrypt("ci/token/value", &tampered).is_err(),
                "byte {i}"
            );
            raw[i] ^= 1;
        }

        let err = key
            .decrypt("ci/token/value", &Ciphertext("not base64!".into()))
            .expect_err("bad base64");
        assert!(err.to_string().contains("not base64"), "{err}");
        let err = key
            .decrypt("ci/token/value", &Ciphertext(BASE64.encode([0; 39])))
            .expect_err("too short");
        assert!(err.to_string().contains("39 bytes"), "{err}");
    }

    #[tokio::test]
    async fn set_get_update_delete_and_names() {
        let store = memory();
        let key = key(7);
        let ci = secrets(&store, "ci", &key);
        assert_eq!(ci.get("token").await.expect("get"), None);
        assert!(ci.names().await.expect("names").is_empty());

        ci.set("token", "first").await.expect("set");
        ci.set("b-other", "x").await.expect("set");
        assert_eq!(
            ci.get("token")
                .await
                .expect("get")
                .as_deref()
                .map(String::as_str),
            Some("first")
        );
        let created = stored(&store, "ci", "token").await;
        assert_eq!(created.status["key_id"], key.id());

        ci.set("token", "second").await.expect("update");
        assert_eq!(
            ci.get("token")
                .await
                .expect("get")
                .as_deref()
                .map(String::as_str),
            Some("second")
        );
        let updated = stored(&store, "ci", "token").await;
        assert!(updated.metadata.resource_version > created.metadata.resource_version);
        assert_eq!(updated.status["key_id"], key.id());

        assert_eq!(ci.names().await.expect("names"), ["b-other", "token"]);
        assert!(ci.delete("token").await.expect("delete"));
        assert!(!ci.delete("token").await.expect("delete again"));
        assert_eq!(ci.get("token").await.expect("get"), None);
        assert_eq!(ci.names().await.expect("names"), ["b-other"]);
    }

    #[tokio::test]
    async fn secrets_are_scoped_to_their_engine() {
        let store = memory();
        let key = key(7);
        secrets(&store, "ci", &key)
            .set("token", "ci-value")
            .await
            .expect("set");
        let cd = secrets(&store, "cd", &key);
        assert_eq!(cd.get("token").await.expect("get"), None);
        assert!(cd.names().await.expect("names").is_empty());
    }

    #[tokio::test]
    async fn multi_key_secrets() {
        let store = memory();
        let ci = secrets(&store, "ci", &key(7));
        let data = BTreeMap::from([
            ("username".to_owned(), "bot".to_owned()),
            ("tls.crt".to_owned(), "-----BEGIN-----".to_owned()),
        ]);
        ci.set_data("registry", data).await.expect("set_data");
        let read = ci
            .get_data("registry")
            .await
            .expect("get_data")
            .expect("exists");
        assert_eq!(read.len(), 2);
        assert_eq!(read["username"].as_str(), "bot");
        assert_eq!(read["tls.crt"].as_str(), "-----BEGIN-----");

        let err = ci.get("registry").await.expect_err("no value key");
        let message = err.to_string();
        assert!(matches!(err, SecretError::NoValue { .. }), "{err:?}");
        assert!(message.contains("tls.crt, username"), "{message}");

        ci.set("registry", "single")
            .await
            .expect("replaces every key");
        let read = ci
            .get_data("registry")
            .await
            .expect("get_data")
            .expect("exists");
        assert_eq!(read.keys().collect::<Vec<_>>(), [VALUE_KEY]);
        assert_eq!(ci.get_data("nope").await.expect("get_data"), None);
    }

    #[tokio::test]
    async fn the_store_holds_no_plaintext() {
        let store = memory();
        let key = key(7);
        let ci = secrets(&store, "ci", &key);
        ci.set("token", "hunter2-plaintext").await.expect("set");
        ci.set_data(
            "registry",
            BTreeMap::from([("password".to_owned(), "pa55-plaintext".to_owned())]),
        )
        .await
        .expect("set_data");
        for name in ["token", "registry"] {
            let json = serde_json::to_string(&stored(&store, "ci", name).await).expect("json");
            assert!(!json.contains("plaintext"), "{json}");
            assert!(
                !json.contains(&BASE64.encode("hunter2-plaintext")),
                "{json}"
            );
            assert!(json.contains(key.id()), "{json}");
        }
    }

    #[tokio::test]
    async fn a_value_copied_to_another_secret_does_not_decrypt() {
        let store = memory();
        let ci = secrets(&store, "ci", &key(7));
        ci.set("token", "hunter2").await.expect("set");
        ci.set("other", "x").await.expect("set");
        let api = Api::<Secret>::new(store.clone());
        let token = api.get("ci", "token").await.expect("get").expect("exists");
        let mut other = api.get("ci", "other").await.expect("get").expect("exists");
        other.spec = token.spec.clone();
        api.update(&other).await.expect("copy the ciphertext");
        let err = ci.get("other").await.expect_err("bound to its location");
        assert!(err.to_string().contains("ci/other/value"), "{err}");
        assert_eq!(
            ci.get("token")
                .await
                .expect("get")
                .expect("exists")
                .as_str(),
            "hunter2"
        );
    }

    #[tokio::test]
    async fn reading_with_another_key_names_both_key_ids() {
        let store = memory();
        let (old, new) = (key(1), key(2));
        secrets(&store, "ci", &old)
            .set("token", "x")
            .await
            .expect("set");
        let err = secrets(&store, "ci", &new)
            .get("token")
            .await
            .expect_err("other key");
        let message = err.to_string();
        assert!(message.contains(old.id()), "{message}");
        assert!(message.contains(new.id()), "{message}");

        // Setting it again with the new key records the new key id.
        secrets(&store, "ci", &new)
            .set("token", "y")
            .await
            .expect("set");
        assert_eq!(
            stored(&store, "ci", "token").await.status["key_id"],
            new.id()
        );
    }

    #[tokio::test]
    async fn resolve_returns_exactly_the_named_secrets() {
        let store = memory();
        let ci = secrets(&store, "ci", &key(7));
        ci.set("a", "1").await.expect("set");
        ci.set("b", "2").await.expect("set");
        ci.set("c", "3").await.expect("set");
        let wanted = BTreeSet::from(["a".to_owned(), "c".to_owned()]);
        let values = ci.resolve(&wanted).await.expect("resolve");
        assert_eq!(values.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(values["a"].as_str(), "1");
        assert_eq!(values["c"].as_str(), "3");
        assert!(
            ci.resolve(&BTreeSet::new())
                .await
                .expect("resolve")
                .is_empty()
        );

        let wanted = BTreeSet::from(["a".to_owned(), "gone".to_owned()]);
        let err = ci.resolve(&wanted).await.expect_err("missing");
        assert!(
            matches!(&err, SecretError::Missing { engine, name } if engine == "ci" && name == "gone"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("`gone` does not exist in engine `ci`"),
            "{message}"
        );
        assert!(message.contains("create it"), "{message}");
    }

    #[tokio::test]
    async fn invalid_names_and_keys_are_refused() {
        let store = memory();
        let ci = secrets(&store, "ci", &key(7));
        let long = "a".repeat(64);
        for name in [
            "",
            "1token",
            "_token",
            "to.ken",
            "to/ken",
            "tøken",
            long.as_str(),
        ] {
            let err = ci.set(name, "x").await.expect_err(name);
            assert!(
                matches!(err, SecretError::InvalidName(_)),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains("starting with a letter"), "{err}");
        }
        ci.set(&"a".repeat(63), "x")
            .await
            .expect("63 chars is fine");
        ci.set("A-b_9", "x")
            .await
            .expect("letters, digits, - and _");

        for key in ["", "a/b", "a b"] {
            let data = BTreeMap::from([(key.to_owned(), "x".to_owned())]);
            let err = ci.set_data("token", data).await.expect_err(key);
            assert!(
                matches!(err, SecretError::InvalidData { .. }),
                "{key:?}: {err:?}"
            );
        }
        let err = ci
            .set_data("token", BTreeMap::new())
            .await
            .expect_err("empty");
        assert!(err.to_string().contains("no keys"), "{err}");
        assert_eq!(ci.get("token").await.expect("get"), None, "nothing written");
    }

    /// A store that lets a rival write land just before a secret's create or
    /// update, so the write under test loses the race.
    #[derive(Debug, Default)]
    struct Rival {
        inner: MemoryStore,
        /// Creates to pre-empt.
        creates: AtomicUsize,
        /// Updates to pre-empt.
        updates: AtomicUsize,
        /// Rival writes made.
        races: AtomicUsize,
    }

    fn take_one(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    #[async_trait]
    impl Store for Rival {
        async fn revision(&self) -> Result<Revision, StoreError> {
            self.inner.revision().await
        }
        async fn get(&self, key: &ObjectRef) -> Result<Option<DynamicObject>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError> {
            self.inner.list(query).await
        }
        async fn create(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
            if take_one(&self.creates) {
                let mut rival = obj.clone();
                rival.spec = serde_json::json!({ "data": { "value": "cml2YWw=" } });
                self.inner.create(rival).await?;
                self.races.fetch_add(1, Ordering::SeqCst);
            }
            self.inner.create(obj).await
        }
        async fn update(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
            if take_one(&self.updates) {
                let mut current = self
                    .inner
                    .get(&ObjectRef::of(&obj))
                    .await?
                    .expect("updated objects exist");
                let races = self.races.fetch_add(1, Ordering::SeqCst);
                current
                    .metadata
                    .labels
                    .insert("rival".into(), races.to_string());
                self.inner.update(current).await?;
            }
            self.inner.update(obj).await
        }
        async fn update_status(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
            self.inner.update_status(obj).await
        }
        async fn delete(
            &self,
            key: &ObjectRef,
            options: &DeleteOptions,
        ) -> Result<DeleteOutcome, StoreError> {
            self.inner.delete(key, options).await
        }
        async fn watch(
            &self,
            kind: &str,
            engine: Option<&str>,
            from_revision: Revision,
        ) -> Result<WatchStream, StoreError> {
            self.inner.watch(kind, engine, from_revision).await
        }
        async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
            self.inner.compact(revision).await
        }
        async fn compacted_revision(&self) -> Result<Revision, StoreError> {
            self.inner.compacted_revision().await
        }
    }

    #[tokio::test]
    async fn set_retries_after_losing_a_create_or_update_race() {
        let rival = Arc::new(Rival::default());
        let store: Arc<dyn Store> = rival.clone();
        let key = key(7);
        let ci = secrets(&store, "ci", &key);

        rival.creates.store(1, Ordering::SeqCst);
        ci.set("token", "mine")
            .await
            .expect("set after AlreadyExists");
        assert_eq!(rival.races.load(Ordering::SeqCst), 1);
        assert_eq!(
            ci.get("token")
                .await
                .expect("get")
                .expect("exists")
                .as_str(),
            "mine"
        );
        assert_eq!(
            stored(&store, "ci", "token").await.status["key_id"],
            key.id()
        );

        rival.updates.store(2, Ordering::SeqCst);
        ci.set("token", "mine again")
            .await
            .expect("set after two conflicts");
        assert_eq!(rival.races.load(Ordering::SeqCst), 3);
        assert_eq!(
            ci.get("token")
                .await
                .expect("get")
                .expect("exists")
                .as_str(),
            "mine again"
        );
    }

    #[tokio::test]
    async fn set_gives_up_after_losing_every_race() {
        let rival = Arc::new(Rival::default());
        let store: Arc<dyn Store> = rival.clone();
        let ci = secrets(&store, "ci", &key(7));
        ci.set("token", "first").await.expect("set");
        rival.updates.store(usize::MAX, Ordering::SeqCst);
        let err = ci
            .set("token", "second")
            .await
            .expect_err("always conflicts");
        assert!(
            matches!(&err, SecretError::Store(e) if e.is_conflict()),
            "{err:?}"
        );
        assert_eq!(rival.races.load(Ordering::SeqCst), WRITE_ATTEMPTS);
        assert_eq!(
            ci.get("token")
                .await
                .expect("get")
                .expect("exists")
                .as_str(),
            "first"
        );
    }

    #[test]
    fn masker_masks_every_value_and_borrows_when_there_is_none() {
        let masker = Masker::new(["hunter2", "", "tok"]);
        assert_eq!(masker.mask("pw=hunter2 t=tok!"), "pw=*** t=***!");
        assert_eq!(masker.mask("hunter2hunter2"), "******");
        assert!(matches!(masker.mask("nothing here"), Cow::Borrowed(_)));
        assert!(matches!(masker.mask(""), Cow::Borrowed(_)));
        let empty = Masker::new(Vec::<String>::new());
        assert!(empty.is_empty());
        assert!(Masker::new([""]).is_empty(), "empty values are ignored");
        assert!(Masker::default().is_empty());
        assert!(matches!(empty.mask("anything"), Cow::Borrowed(_)));
        assert_eq!(format!("{masker:?}"), "Masker { values: 2 }");
    }

    #[test]
    fn masker_hides_nested_and_overlapping_values_whole() {
        // One value inside another: the longer is masked whole.
        let masker = Masker::new(["abc", "xxabcxx"]);
        assert_eq!(masker.mask("-xxabcxx-abc-"), "-***-***-");
        // Overlapping occurrences are masked as one span, leaking no part.
        let masker = Masker::new(["abc", "cde"]);
        assert_eq!(masker.mask("1abcde2"), "1***2");
        assert_eq!(masker.mask("1abcabc2"), "1******2");
        let masker = Masker::new(["aa"]);
        assert_eq!(masker.mask("aaa"), "***");
        // Multi-byte characters around and inside values.
        let masker = Masker::new(["pässwörd"]);
        assert_eq!(masker.mask("ü pässwörd ü"), "ü *** ü");
    }

    #[test]
    fn masker_masks_each_line_of_a_multi_line_value() {
        let pem = "-----BEGIN KEY-----\r\nMIIEvQIBADAN\n   \nBgkqhkiG9w0B\n-----END KEY-----\n";
        let masker = Masker::new([pem]);
        assert_eq!(masker.mask("line MIIEvQIBADAN"), "line ***");
        assert_eq!(masker.mask("BgkqhkiG9w0B"), "***");
        assert_eq!(masker.mask("-----BEGIN KEY-----"), "***");
        assert_eq!(masker.mask(&format!("<{pem}>")), "<***>");
        assert!(
            matches!(masker.mask("a   b"), Cow::Borrowed(_)),
            "blank lines are not values"
        );
    }

    #[test]
    fn mask_json_masks_every_string() {
        let masker = Masker::new(["hunter2"]);
        let mut value = serde_json::json!({
            "user": "bot",
            "password": "hunter2",
            "nested": [{"cmd": "login -p hunter2"}, 42, true, null],
            "hunter2": "as a key",
        });
        masker.mask_json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "user": "bot",
                "password": "***",
                "nested": [{"cmd": "login -p ***"}, 42, true, null],
                "***": "as a key",
            })
        );
    }

    proptest! {
        #[test]
        fn masked_text_contains_no_value(
            values in proptest::collection::vec("[abc]{1,4}", 1..4),
            text in "[abc ]{0,40}",
        ) {
            let masker = Masker::new(&values);
            let masked = masker.mask(&text);
            for value in &values {
                prop_assert!(!masked.contains(value.as_str()), "{value:?} in {masked:?}");
            }
        }
    }
}

/// The module's example, kept as a test (the module is private to the crate).
#[cfg(test)]
mod example {
    #[test]
    fn secrets_and_masker() {
        use crate::pipeline::secrets::{Masker, SecretKey, Secrets};
        use crate::store::{MemoryStore, Store};
        use std::collections::BTreeSet;
        use std::sync::Arc;

        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let dir = tempfile::tempdir()?;
                let key = SecretKey::load_or_create(&dir.path().join("secret.key"))?;
                let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
                let secrets = Secrets::new(store, "ci", Arc::new(key));
                secrets.set("registry_token", "hunter2").await?;

                // What one step is given: exactly the secrets it references.
                let wanted = BTreeSet::from(["registry_token".to_string()]);
                let values = secrets.resolve(&wanted).await?;
                assert_eq!(values["registry_token"].as_str(), "hunter2");

                // And its log lines are masked with those values.
                let masker = Masker::new(values.values());
                assert_eq!(masker.mask("login with hunter2"), "login with ***");
                Ok::<(), Box<dyn std::error::Error>>(())
            })
            .unwrap();
    }
}
