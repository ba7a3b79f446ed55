//! The execution's status as the driver keeps it: changed in memory, written
//! back coalesced and compare-and-swap retried.

use std::sync::Mutex;
use std::time::Duration;

use crate::model::{PipelineExecution, PipelineExecutionStatus, StepStatus};
use crate::runtime::CancelToken;
use crate::store::{Api, StoreError};

/// Where a step's status lives in the execution status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loc {
    Stage(usize, usize),
    Finally(usize),
}

pub(super) fn step_at(st: &mut PipelineExecutionStatus, loc: Loc) -> &mut StepStatus {
    match loc {
        Loc::Stage(i, j) => &mut st.stages[i].steps[j],
        Loc::Finally(j) => &mut st.finally[j],
    }
}

/// The phase of the step run at `loc`.
pub(super) fn phase_at(st: &PipelineExecutionStatus, loc: Loc) -> crate::model::StepPhase {
    match loc {
        Loc::Stage(i, j) => st.stages[i].steps[j].phase,
        Loc::Finally(j) => st.finally[j].phase,
    }
}

/// Whether a step (or stage) that ended in `phase` fails what contains it: an
/// abort always does; a failure unless `continue_on_error` tolerates it.
pub(super) fn fails(phase: crate::model::StepPhase, continue_on_error: bool) -> bool {
    use crate::model::StepPhase;
    match phase {
        StepPhase::Aborted => true,
        StepPhase::Failed => !continue_on_error,
        _ => false,
    }
}

/// The execution was deleted while it ran (or the store was closed under it).
#[derive(Debug)]
pub(super) struct Deleted;

/// The execution object and its status, written back coalesced: `update`
/// changes memory, `flush` makes every change made so far durable.
pub(super) struct StatusCell {
    pub(super) api: Api<PipelineExecution>,
    pub(super) state: Mutex<(PipelineExecution, u64)>,
    pub(super) written: tokio::sync::Mutex<u64>,
    /// Cancelled when a re-read shows `spec.abort`.
    pub(super) abort: CancelToken,
}

impl StatusCell {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, (PipelineExecution, u64)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&PipelineExecutionStatus) -> T) -> T {
        f(&self.lock().0.status)
    }

    pub(super) fn update<T>(&self, f: impl FnOnce(&mut PipelineExecutionStatus) -> T) -> T {
        let mut state = self.lock();
        state.1 += 1;
        f(&mut state.0.status)
    }

    pub(super) async fn flush(&self) -> Result<(), Deleted> {
        let mut written = self.written.lock().await;
        let mut failures = 0u32;
        loop {
            // The status and metadata only: the spec (the pipeline's snapshot,
            // most of the object) is neither copied nor encoded for a write.
            let (meta, status, version) = {
                let state = self.lock();
                (state.0.metadata.clone(), state.0.status.clone(), state.1)
            };
            if *written >= version {
                return Ok(());
            }
            match self.api.write_status(&meta, &status).await {
                Ok(stored) => {
                    self.lock().0.metadata = stored;
                    *written = version;
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => {
                    match self.api.get(&meta.engine, &meta.name).await {
                        Ok(Some(latest)) => {
                            if latest.status.phase.is_finished() {
                                // Another driver finished it: never write over that.
                                return Err(Deleted);
                            }
                            if latest.spec.abort {
                                self.abort.cancel();
                            }
                            let mut state = self.lock();
                            state.0.metadata = latest.metadata;
                            state.0.spec.abort = latest.spec.abort;
                        }
                        Ok(None) | Err(StoreError::Closed { .. }) => return Err(Deleted),
                        Err(e) => {
                            failures += 1;
                            store_trouble(&e, failures).await;
                        }
                    }
                }
                // Not found: deleted. Closed: the container shut down and
                // closed its store; the next start resumes from the last write.
                Err(StoreError::NotFound { .. } | StoreError::Closed { .. }) => {
                    return Err(Deleted);
                }
                Err(e) => {
                    failures += 1;
                    store_trouble(&e, failures).await;
                }
            }
        }
    }
}

pub(super) async fn store_trouble(e: &StoreError, failures: u32) {
    let delay = Duration::from_millis(50u64.saturating_mul(1 << failures.min(8)))
        .min(Duration::from_secs(10));
    tracing::warn!(error = %e, retry_in = ?delay, "cannot write an execution's status; retrying");
    tokio::time::sleep(delay).await;
}
