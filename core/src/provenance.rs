//! Build provenance of what pipelines publish (what Tekton Chains adds to
//! Tekton): an [in-toto statement] whose predicate is [SLSA provenance v1],
//! signed with the engine's ed25519 key in a [DSSE envelope].
//!
//! The **host** writes the statement: a biz granted the built-in host call
//! [`HOST_CALL`] names only the subjects (what it published, by digest); the
//! pipeline, execution, source commit, parameters and the biz digest of every
//! step that ran come from the host's own records, so a biz cannot forge them,
//! and the signing key never enters a guest. The biz then pushes the envelope
//! to the registry as an OCI referrer of its subject ([`ARTIFACT_TYPE`]).
//!
//! [`verify`] checks an envelope against a public key and returns the
//! statement; `arkline ctl verify-provenance` uses it.
//!
//! [in-toto statement]: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
//! [SLSA provenance v1]: https://slsa.dev/spec/v1.0/provenance
//! [DSSE envelope]: https://github.com/secure-systems-lab/dsse/blob/master/envelope.md

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ark::{PublicKey, SecretKey};

/// The built-in `host-call` name a biz calls to have its subjects attested.
/// Like every host call it needs the `host-call` capability naming it.
pub const HOST_CALL: &str = crate::host::PROVENANCE_CALL;
/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The OCI artifact type (and layer media type) of a DSSE envelope.
pub const ARTIFACT_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// SLSA provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The SLSA build type of an arkline pipeline execution.
pub const BUILD_TYPE: &str = "https://arkline.dev/provenance/pipeline/v1";
/// Subjects per statement, at most.
pub const MAX_SUBJECTS: usize = 64;

/// One artifact a statement is about: a name (`registry/repository`) and its
/// digests (`{"sha256": "<hex>"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// What it is called, e.g. `127.0.0.1:5000/team/app`.
    pub name: String,
    /// Algorithm → lowercase hex digest; `sha256` is required.
    pub digest: std::collections::BTreeMap<String, String>,
}

/// What a biz sends to [`HOST_CALL`] (as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The artifacts to attest.
    pub subjects: Vec<Subject>,
}

/// A DSSE envelope (its JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The payload's type ([`PAYLOAD_TYPE`]).
    pub payload_type: String,
    /// The payload, base64.
    pub payload: String,
    /// Its signatures.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The signing key's id ([`PublicKey::id`]).
    #[serde(default)]
    pub keyid: String,
    /// The ed25519 signature of the PAE, base64.
    pub sig: String,
}

/// DSSE's pre-authentication encoding: what is signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// What a signer knows of the step that asks: everything in the predicate
/// but the subjects.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The engine.
    pub engine: String,
    /// The pipeline.
    pub pipeline: String,
    /// The execution (`metadata.name`).
    pub execution: String,
    /// Its run number.
    pub run: u64,
    /// The step asking.
    pub step: String,
    /// The execution's parameters.
    pub params: Value,
    /// Its trigger's event (`manual`, `push`, …).
    pub event: Option<String>,
    /// The source checked out: repository URL, commit, branch.
    pub source: Option<SourceFacts>,
    /// Every step that ran or is running, in pipeline order.
    pub steps: Vec<StepFacts>,
    /// When the execution started (RFC 3339).
    pub started: Option<String>,
}

/// The source of an execution.
#[derive(Debug, Clone, Default)]
pub struct SourceFacts {
    /// Repository URL.
    pub repository: String,
    /// Full commit SHA.
    pub commit: String,
    /// Branch, if known.
    pub branch: Option<String>,
}

/// A step that ran, and the biz that ran it.
#[derive(Debug, Clone)]
pub struct StepFacts {
    /// Step name.
    pub name: String,
    /// `biz@version`.
    pub biz: String,
    /// SHA-256 of the biz's component.
    pub sha256: String,
}

/// Why a statement was not signed or an envelope did not verify.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// The request is malformed.
    #[error("invalid provenance request: {0}")]
    Request(String),
    /// The envelope or statement is malformed.
    #[error("malformed provenance: {0}")]
    Malformed(String),
    /// The signature does not verify with the key.
    #[error(
        "the provenance signature does not verify with key {key}: the statement was altered, or signed by another key"
    )]
    BadSignature {
        /// The key's id.
        key: String,
    },
}

/// Signs statements for the steps of one execution with its engine's key.
pub struct Signer {
    key: SecretKey,
    facts: Facts,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key", &self.key.public_key().id())
            .field("execution", &self.facts.execution)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `facts` with `key`.
    pub fn new(key: SecretKey, facts: Facts) -> Self {
        Signer { key, facts }
    }

    /// The public key that verifies what this signs.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Answers a [`HOST_CALL`] request: the JSON of the envelope of a
    /// statement about its subjects.
    pub fn answer(&self, request: &[u8]) -> Result<Vec<u8>, ProvenanceError> {
        let request: Request = serde_json::from_slice(request).map_err(|e| {
            ProvenanceError::Request(format!(
                "{e}; send {{\"subjects\": [{{\"name\": \"registry/repo\", \"digest\": {{\"sha256\": \"<64 hex>\"}}}}]}}"
            ))
        })?;
        check_subjects(&request.subjects)?;
        let envelope = self.sign(&statement(&request.subjects, &self.facts));
        serde_json::to_vec(&envelope).map_err(|e| ProvenanceError::Request(e.to_string()))
    }

    /// The envelope of `statement`.
    pub fn sign(&self, statement: &Value) -> Envelope {
        let payload = serde_json::to_vec(statement).expect("a JSON value serialises");
        let sig = self.key.sign(&pae(PAYLOAD_TYPE, &payload));
        Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: B64.encode(&payload),
            signatures: vec![EnvelopeSignature {
                keyid: self.key.public_key().id(),
                sig: B64.encode(sig),
            }],
        }
    }
}

fn check_subjects(subjects: &[Subject]) -> Result<(), ProvenanceError> {
    if subjects.is_empty() || subjects.len() > MAX_SUBJECTS {
        return Err(ProvenanceError::Request(format!(
            "name 1 to {MAX_SUBJECTS} subjects, not {}",
            subjects.len()
        )));
    }
    for s in subjects {
        if s.name.is_empty() || s.name.len() > 512 || s.name.chars().any(char::is_control) {
            return Err(ProvenanceError::Request(format!(
                "subject name {:?}: 1 to 512 printable characters",
                s.name
            )));
        }
        let ok = s.digest.get("sha256").is_some_and(|d| {
            d.len() == 64
                && d.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !ok || s.digest.len() != 1 {
            return Err(ProvenanceError::Request(format!(
                "subject {}: its digest must be exactly {{\"sha256\": \"<64 lowercase hex digits>\"}}",
                s.name
            )));
        }
    }
    Ok(())
}

/// The in-toto statement (SLSA provenance v1) about `subjects`.
pub fn statement(subjects: &[Subject], facts: &Facts) -> Value {
    let mut external = json!({
        "engine": facts.engine,
        "pipeline": facts.pipeline,
        "parameters": facts.params,
    });
    if let Some(event) = &facts.event {
        external["event"] = json!(event);
    }
    let mut dependencies = Vec::new();
    if let Some(source) = &facts.source {
        external["source"] = json!({
            "repository": source.repository,
            "commit": source.commit,
            "branch": source.branch,
        });
    }
    if let Some(source) = facts.source.as_ref().filter(|s| !s.repository.is_empty()) {
        let reference = source
            .branch
            .as_ref()
            .map(|b| format!("@refs/heads/{b}"))
            .unwrap_or_default();
        dependencies.push(json!({
            "uri": format!("git+{}{reference}", source.repository),
            "digest": { "gitCommit": source.commit },
        }));
    }
    for step in &facts.steps {
        dependencies.push(json!({
            "uri": format!("arkline:biz/{}", step.biz),
            "name": step.name,
            "digest": { "sha256": step.sha256 },
            "annotations": { "step": step.name },
        }));
    }
    let mut metadata = json!({
        "invocationId": format!("{}/{}", facts.engine, facts.execution),
    });
    if let Some(started) = &facts.started {
        metadata["startedOn"] = json!(started);
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {
                    "execution": facts.execution,
                    "run": facts.run,
                    "step": facts.step,
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": format!("https://arkline.dev/engine/{}", facts.engine),
                    "version": { "arkline": env!("CARGO_PKG_VERSION") },
                },
                "metadata": metadata,
            },
        },
    })
}

/// Checks `envelope` against `key` and returns its statement. Checks the
/// payload type, the signature over the PAE, and that the payload is an
/// in-toto statement (the caller compares its subjects).
pub fn verify(envelope: &Envelope, key: &PublicKey) -> Result<Value, ProvenanceError> {
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(ProvenanceError::Malformed(format!(
            "payload type {:?}, expected {PAYLOAD_TYPE:?}",
            envelope.payload_type
        )));
    }
    let payload = base64_any(&envelope.payload)
        .ok_or_else(|| ProvenanceError::Malformed("the payload is not base64".into()))?;
    let message = pae(&envelope.payload_type, &payload);
    let verified = envelope.signatures.iter().any(|s| {
        base64_any(&s.sig)
            .and_then(|sig| <[u8; 64]>::try_from(sig).ok())
            .is_some_and(|sig| key.verify(&message, &sig))
    });
    if !verified {
        return Err(ProvenanceError::BadSignature { key: key.id() });
    }
    let statement: Value = serde_json::from_slice(&payload)
        .map_err(|e| ProvenanceError::Malformed(format!("the payload is not JSON: {e}")))?;
    if statement["_type"] != STATEMENT_TYPE {
        return Err(ProvenanceError::Malformed(format!(
            "statement type {}, expected {STATEMENT_TYPE:?}",
            statement["_type"]
        )));
    }
    if statement["predicateType"] != PREDICATE_TYPE {
        return Err(ProvenanceError::Malformed(format!(
            "predicate type {}, expected {PREDICATE_TYPE:?}",
            statement["predicateType"]
        )));
    }
    Ok(statement)
}

/// Standard or URL-safe base64, padded or not, as DSSE allows.
fn base64_any(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [B64, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text.as_bytes()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            name: "127.0.0.1:5000/app".into(),
            digest: [("sha256".to_owned(), "ab".repeat(32))].into(),
        }
    }

    #[test]
    fn a_signed_statement_verifies_and_a_changed_one_does_not() {
        let key = SecretKey::generate().expect("a key");
        let public = key.public_key();
        let facts = Facts {
            engine: "team-a".into(),
            pipeline: "release".into(),
            execution: "release-3".into(),
            steps: vec![StepFacts {
                name: "publish".into(),
                biz: "image@0.1.0".into(),
                sha256: "cd".repeat(32),
            }],
            ..Facts::default()
        };
        let signer = Signer::new(key, facts);
        let request = serde_json::to_vec(&Request {
            subjects: vec![subject()],
        })
        .expect("json");
        let envelope: Envelope =
            serde_json::from_slice(&signer.answer(&request).expect("signs")).expect("json");
        let statement = verify(&envelope, &public).expect("verifies");
        assert_eq!(statement["subject"][0]["digest"]["sha256"], "ab".repeat(32));
        assert_eq!(
            statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["sha256"],
            "cd".repeat(32)
        );

        let mut altered = statement.clone();
        altered["predicate"]["buildDefinition"]["externalParameters"]["pipeline"] = json!("other");
        let tampered = Envelope {
            payload: B64.encode(serde_json::to_vec(&altered).expect("json")),
            ..envelope.clone()
        };
        assert!(matches!(
            verify(&tampered, &public),
            Err(ProvenanceError::BadSignature { .. })
        ));
        let other = SecretKey::generate().expect("a key").public_key();
        assert!(verify(&envelope, &other).is_err());
    }

    #[test]
    fn requests_name_subjects_by_sha256() {
        let signer = Signer::new(SecretKey::generate().expect("a key"), Facts::default());
        for bad in [
            json!({}),
            json!({"subjects": []}),
            json!({"subjects": [{"name": "x", "digest": {"sha256": "AB"}}]}),
            json!({"subjects": [{"name": "x", "digest": {"sha512": "ab".repeat(32)}}]}),
        ] {
            let e = signer
                .answer(&serde_json::to_vec(&bad).expect("json"))
                .expect_err("refused");
            assert!(
                e.to_string().starts_with("invalid provenance request"),
                "{e}"
            );
        }
    }
}
