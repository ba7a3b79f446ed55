//! ed25519 signatures of `.ark` archives.
//!
//! `ark.sig` signs the exact bytes of `ark.toml`, which pins every other entry by
//! SHA-256 and size, so one signature covers the whole archive. It is a small TOML
//! file:
//!
//! ```toml
//! algorithm = "ed25519"
//! public_key = "<64 hex digits>"
//! signature = "<128 hex digits>"
//! ```

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::archive::{ArchiveError, Ark};

/// An ed25519 public key, written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// A short id: the first 16 hex digits of the key.
    pub fn id(&self) -> String {
        hex::encode(&self.0.as_bytes()[..8])
    }
}

impl PublicKey {
    /// Whether `signature` is this key's (strict) ed25519 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not an ed25519 {what}: {reason}")]
pub struct KeyError {
    what: &'static str,
    reason: String,
}

fn decode_32(text: &str, what: &'static str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(text.trim()).map_err(|e| KeyError {
        what,
        reason: format!("expected 64 hex digits ({e})"),
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| KeyError {
        what,
        reason: format!("expected 32 bytes, found {}", b.len()),
    })
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_32(text, "public key")?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| KeyError {
                what: "public key",
                reason: e.to_string(),
            })
    }
}

/// An ed25519 secret key, written as the 64 hex digits of its seed.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError {
            what: "secret key",
            reason: format!("no randomness available: {e}"),
        })?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The seed as hex, for the key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }
}

impl FromStr for SecretKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Ok(SecretKey(SigningKey::from_bytes(&decode_32(
            text,
            "secret key",
        )?)))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public_key())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigFile {
    algorithm: String,
    public_key: String,
    signature: String,
}

/// Who signed an archive, once the signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// No `ark.sig`.
    Unsigned,
    /// Signed by a key in the trusted set.
    Trusted(PublicKey),
    /// A valid signature by a key no one said to trust (no trusted set was given).
    Unverified(PublicKey),
}

impl fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureStatus::Unsigned => f.write_str("unsigned"),
            SignatureStatus::Trusted(k) => write!(f, "signed by trusted key {}", k.id()),
            SignatureStatus::Unverified(k) => write!(
                f,
                "valid signature by key {} (not checked against trusted keys)",
                k.id()
            ),
        }
    }
}

/// Which signatures an engine accepts.
#[derive(Debug, Clone, Default)]
pub struct SignaturePolicy {
    /// Keys whose signatures are trusted. When non-empty, a signature by any other
    /// key is refused.
    pub trusted: Vec<PublicKey>,
    /// Refuse unsigned archives.
    pub require_signature: bool,
}

impl Ark {
    /// Checks `ark.sig` against `policy`. A signature that does not verify is
    /// always refused; an unsigned archive only when the policy requires signatures.
    pub fn verify_signature(
        &self,
        policy: &SignaturePolicy,
    ) -> Result<SignatureStatus, ArchiveError> {
        let Some(sig) = &self.signature else {
            return if policy.require_signature {
                Err(ArchiveError::Unsigned)
            } else {
                Ok(SignatureStatus::Unsigned)
            };
        };
        let bad = |reason: String| ArchiveError::BadSignature(reason);
        let text = std::str::from_utf8(sig).map_err(|_| bad("ark.sig is not UTF-8".into()))?;
        let file: SigFile = toml::from_str(text)
            .map_err(|e| bad(format!("ark.sig is malformed: {}", e.message())))?;
        if file.algorithm != "ed25519" {
            return Err(bad(format!(
                "algorithm `{}` is not supported (only ed25519)",
                file.algorithm
            )));
        }
        let key: PublicKey = file
            .public_key
            .parse()
            .map_err(|e: KeyError| bad(e.to_string()))?;
        let sig_bytes: [u8; 64] = hex::decode(file.signature.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the signature is not 128 hex digits".into()))?;
        key.0
            .verify_strict(&self.manifest_bytes, &Signature::from_bytes(&sig_bytes))
            .map_err(|_| {
                bad(format!(
                    "the signature by key {} does not match ark.toml; the archive was altered after signing",
                    key.id()
                ))
            })?;
        if policy.trusted.contains(&key) {
            Ok(SignatureStatus::Trusted(key))
        } else if policy.trusted.is_empty() {
            Ok(SignatureStatus::Unverified(key))
        } else {
            Err(ArchiveError::UntrustedKey(key.id()))
        }
    }

    /// The archive with `ark.sig` added (or replaced) by `key`, written
    /// deterministically.
    pub fn signed(&self, key: &SecretKey) -> Result<Vec<u8>, ArchiveError> {
        let signature = key.0.sign(&self.manifest_bytes);
        let file = SigFile {
            algorithm: "ed25519".into(),
            public_key: key.public_key().to_string(),
            signature: hex::encode(signature.to_bytes()),
        };
        let text = toml::to_string(&file)
            .map_err(|e| ArchiveError::BadSignature(format!("cannot write ark.sig: {e}")))?;
        let mut entries = self.entries();
        entries.insert(super::SIGNATURE_PATH.to_owned(), text.into_bytes());
        super::write_deterministic_zip(&entries, |_| false)
    }
}
