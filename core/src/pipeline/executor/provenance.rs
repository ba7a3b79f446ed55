//! The provenance signer of one step call: the engine's key and the facts of
//! the execution so far (see [`crate::provenance`]).

use std::collections::BTreeSet;
use std::str::FromStr as _;

use super::Driver;
use crate::ark::SecretKey;
use crate::model::{Step, StepPhase};
use crate::provenance::{Facts, HOST_CALL, Signer, SourceFacts, StepFacts};
use crate::runtime::BizLease;

impl Driver {
    /// The signer for a call of `step` by `lease`: `None` when the engine
    /// signs no provenance or the biz is not granted [`HOST_CALL`]; an error
    /// (the answer to the step's request, if it makes one) when the engine's
    /// key cannot be read.
    pub(super) async fn provenance_signer(
        &self,
        step: &Step,
        lease: &BizLease,
    ) -> Result<Option<Signer>, String> {
        let Some(setting) = &self.settings.provenance else {
            return Ok(None);
        };
        if !lease
            .capabilities()
            .host_call
            .iter()
            .any(|n| n == HOST_CALL)
        {
            return Ok(None);
        }
        let name = &setting.key_secret;
        let values = self
            .core
            .secrets
            .resolve(&BTreeSet::from([name.clone()]))
            .await
            .map_err(|e| format!("provenance: the signing key (`provenance.key_secret`): {e}"))?;
        let text = values.get(name).map(|v| v.as_str()).unwrap_or_default();
        // The parse error is not passed on: it would quote the secret.
        let key = SecretKey::from_str(text).map_err(|_| {
            format!(
                "provenance: secret `{name}` (`provenance.key_secret`) is not an ed25519 seed; \
                 store the 64 hex digits `cargo ark keygen` writes as its `value`"
            )
        })?;
        Ok(Some(Signer::new(key, self.provenance_facts(step))))
    }

    /// What the statement says besides its subjects: the execution, its
    /// source, parameters, and every step that ran or runs, with its biz.
    fn provenance_facts(&self, step: &Step) -> Facts {
        let spec = &self.exec.spec;
        let (ran, source, started) = self.cell.read(|status| {
            let ran: BTreeSet<String> = status
                .stages
                .iter()
                .flat_map(|s| s.steps.iter())
                .chain(status.finally.iter())
                // Finished steps only (and the caller, below): a parallel
                // step still running would make the statement of a retried
                // step differ, and its republished image get a second one.
                .filter(|s| matches!(s.phase, StepPhase::Succeeded | StepPhase::Failed))
                .map(|s| s.name.clone())
                .collect();
            let source = status.source.as_ref().map(|s| SourceFacts {
                repository: s.repository.clone(),
                commit: s.commit.clone(),
                branch: (!s.branch.is_empty()).then(|| s.branch.clone()),
            });
            (ran, source, status.started.map(|t| t.to_rfc3339()))
        });
        let steps = spec
            .pipeline_spec
            .all_steps()
            .filter(|s| s.name == step.name || ran.contains(&s.name))
            .filter_map(|s| {
                let (lease, _) = self.leases.get(&s.uses.as_ref()?.to_string())?;
                Some(StepFacts {
                    name: s.name.clone(),
                    biz: lease.id(),
                    sha256: lease.sha256().to_owned(),
                })
            })
            .collect();
        let source = source.or_else(|| {
            // No checkout, but the trigger named a commit.
            (!spec.commit.is_empty()).then(|| SourceFacts {
                repository: String::new(),
                commit: spec.commit.clone(),
                branch: (!spec.branch.is_empty()).then(|| spec.branch.clone()),
            })
        });
        Facts {
            engine: self.core.name.clone(),
            pipeline: spec.pipeline.clone(),
            execution: self.exec.metadata.name.clone(),
            run: spec.run,
            step: step.name.clone(),
            params: serde_json::to_value(&spec.params).unwrap_or_default(),
            event: (!spec.event.is_empty()).then(|| spec.event.clone()),
            source,
            steps,
            started,
        }
    }
}
