//! The driver's part of the pipeline's `source`: the checkout before the first
//! step, with its log, recorded in the status.

use std::sync::Arc;

use crate::host::step_log::{LogCapture, LogLabels};
use crate::model::SourceSpec;
use crate::pipeline::logs::{LogKey, MaskFn};
use crate::pipeline::source::{Checkout, LOG_STEP};

use super::Driver;
use super::status::Deleted;

impl Driver {
    /// Checks the pipeline's `source` out into the workspace and records the
    /// commit (flushed before any step runs). `Err` carries why the execution
    /// fails; an abort or a shutdown stops the checkout.
    pub(super) async fn check_out(
        &self,
        source: &SourceSpec,
    ) -> Result<Result<(), String>, Deleted> {
        let key = LogKey {
            engine: self.core.name.clone(),
            execution: self.exec.metadata.name.clone(),
            step: LOG_STEP.to_owned(),
        };
        let credential = match crate::pipeline::source::credential_for(
            source,
            self.exec.spec.untrusted,
            self.settings.pipelines_from_repo.as_ref(),
        ) {
            Ok(c) => c,
            Err(why) => return Ok(Err(format!("source: {why}"))),
        };
        let masker = match Checkout::masker(&self.core, source, credential.as_deref()).await {
            Ok(m) => m,
            Err(why) => return Ok(Err(format!("source: {why}"))),
        };
        let mask: Option<MaskFn> = if masker.is_empty() {
            None
        } else {
            Some(Arc::new(move |s: &str| masker.mask(s)))
        };
        let writer =
            match self
                .core
                .logs
                .writer(&key, 1, self.core.options.step_log_cap, mask.clone())
            {
                Ok(w) => w,
                Err(e) => return Ok(Err(format!("source: log: {e}"))),
            };
        self.cell.update(|st| {
            st.logs.insert(LOG_STEP.to_owned(), key.to_string());
        });
        let sink_writer = writer.clone();
        let capture = LogCapture::new(
            usize::try_from(self.core.options.step_log_cap).unwrap_or(usize::MAX),
            LogLabels {
                engine: self.core.name.clone(),
                biz: "arkline".into(),
                step: LOG_STEP.into(),
            },
            Some(Arc::new(move |line| sink_writer.write(line))),
        )
        .with_mask(mask);
        let recorded = self.cell.read(|s| s.source.clone());
        let checkout = Checkout {
            core: &self.core,
            source,
            exec: &self.exec,
            workspace: &self.workspace,
            log: &capture,
            require_sandbox: self.settings.require_sandbox,
            credential,
        };
        let outcome = tokio::select! {
            done = checkout.run(recorded.as_ref()) => Some(done),
            () = self.abort.cancelled() => None,
            () = self.core.shutdown.cancelled() => None,
        };
        let result = match outcome {
            Some(Ok(status)) => {
                self.cell.update(|st| st.source = Some(status));
                Ok(())
            }
            Some(Err(why)) => {
                writer.note(&format!("checkout failed: {why}"));
                Err(format!("source: {why}"))
            }
            // Aborted or shut down: the caller takes its usual path (the steps
            // are not started, `finally` runs, the end says `Aborted`).
            None => Ok(()),
        };
        writer.finish();
        self.cell.flush().await?;
        Ok(result)
    }
}
