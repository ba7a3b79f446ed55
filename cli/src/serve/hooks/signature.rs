//! Checking that a delivery comes from the forge that knows the pipeline's
//! webhook secret: GitHub signs the body (`X-Hub-Signature-256:
//! sha256=<hex HMAC-SHA256 of the body>`), GitLab sends the secret itself
//! (`X-Gitlab-Token`). Both comparisons take constant time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a delivery's signature was refused. The messages are shown to the sender
/// (they appear in the forge's delivery log) and name no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// GitHub delivery without `X-Hub-Signature-256`.
    #[error(
        "the delivery has no `X-Hub-Signature-256` header: set a secret on the GitHub webhook \
         (the same value as the engine secret the pipeline's webhook trigger names)"
    )]
    MissingGithubSignature,
    /// The header is not `sha256=<64 hex digits>`.
    #[error("`X-Hub-Signature-256` is not `sha256=<hex HMAC-SHA256 of the body>`")]
    MalformedGithubSignature,
    /// GitLab delivery without `X-Gitlab-Token`.
    #[error(
        "the delivery has no `X-Gitlab-Token` header: set a secret token on the GitLab webhook \
         (the same value as the engine secret the pipeline's webhook trigger names)"
    )]
    MissingGitlabToken,
    /// Gitea or Forgejo delivery without `X-Gitea-Signature`/`X-Forgejo-Signature`.
    #[error(
        "the delivery has no `X-Gitea-Signature` header: set a secret on the Gitea or Forgejo \
         webhook (the same value as the engine secret the pipeline's webhook trigger names)"
    )]
    MissingGiteaSignature,
    /// The header is not 64 hex digits.
    #[error("`X-Gitea-Signature` is not the hex HMAC-SHA256 of the body")]
    MalformedGiteaSignature,
    /// A well-formed signature or token that no webhook secret of the pipeline matches.
    #[error(
        "the delivery's signature does not match the pipeline's webhook secret: check that the \
         forge's webhook secret and the engine secret named by the trigger's `secret` are the same"
    )]
    Mismatch,
}

/// A GitHub `X-Hub-Signature-256` value, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubSignature(Vec<u8>);

impl GithubSignature {
    /// Parses `sha256=<hex>`.
    pub fn parse(header: &str) -> Result<Self, SignatureError> {
        let hex_digest = header
            .trim()
            .strip_prefix("sha256=")
            .ok_or(SignatureError::MalformedGithubSignature)?;
        Self::from_hex(hex_digest).ok_or(SignatureError::MalformedGithubSignature)
    }

    /// Parses Gitea's and Forgejo's `X-Gitea-Signature`: the same HMAC,
    /// bare hex.
    pub fn parse_gitea(header: &str) -> Result<Self, SignatureError> {
        Self::from_hex(header.trim()).ok_or(SignatureError::MalformedGiteaSignature)
    }

    fn from_hex(hex_digest: &str) -> Option<Self> {
        let bytes = hex::decode(hex_digest).ok()?;
        (bytes.len() == 32).then_some(Self(bytes))
    }

    /// Whether this is the HMAC-SHA256 of `body` under `secret` (constant time).
    pub fn verifies(&self, secret: &[u8], body: &[u8]) -> bool {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&self.0).is_ok()
    }
}

/// The HMAC GitHub would send for `body` under `secret`, as the header value
/// (`sha256=<hex>`). For tests and for clients that replay deliveries.
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether a GitLab token equals `secret`. The two are hashed first so the
/// comparison takes the same time whatever their lengths.
pub fn gitlab_token_matches(token: &str, secret: &str) -> bool {
    let a = Sha256::digest(token.as_bytes());
    let b = Sha256::digest(secret.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_github_signature_verifies_only_its_body_and_secret() {
        let header = github_signature(b"s3cret", b"{\"a\":1}");
        let sig = GithubSignature::parse(&header).expect("well-formed");
        assert!(sig.verifies(b"s3cret", b"{\"a\":1}"));
        assert!(!sig.verifies(b"s3cret", b"{\"a\":2}"));
        assert!(!sig.verifies(b"other", b"{\"a\":1}"));
    }

    #[test]
    fn the_known_github_example_verifies() {
        // GitHub's documented test vector ("Validating webhook deliveries").
        let sig = GithubSignature::parse(
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )
        .expect("well-formed");
        assert!(sig.verifies(b"It's a Secret to Everybody", b"Hello, World!"));
    }

    #[test]
    fn a_gitea_signature_is_the_same_hmac_in_bare_hex() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let github = github_signature(b"s3cret", body);
        let bare = github.strip_prefix("sha256=").expect("prefixed");
        let sig = GithubSignature::parse_gitea(bare).expect("parses");
        assert!(sig.verifies(b"s3cret", body));
        assert!(!sig.verifies(b"other", body));
        for bad in ["", "zz", "abcd", &github] {
            assert_eq!(
                GithubSignature::parse_gitea(bad),
                Err(SignatureError::MalformedGiteaSignature),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_signatures_are_refused() {
        for bad in ["", "sha1=abcd", "sha256=zz", "sha256=abcd", "757107ea"] {
            assert_eq!(
                GithubSignature::parse(bad),
                Err(SignatureError::MalformedGithubSignature),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn gitlab_tokens_compare_whole() {
        assert!(gitlab_token_matches("tok", "tok"));
        assert!(!gitlab_token_matches("tok", "tok2"));
        assert!(!gitlab_token_matches("", "tok"));
    }
}
