//! The values a step function receives and returns.

use std::collections::BTreeMap;
use std::fmt;

use crate::bindings::arkline::step::types as wit_types;
use crate::bindings::exports::arkline::step::plugin as wit;

/// Where and as what a step runs, filled in by the host for every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The engine (namespace) running the step.
    pub engine: String,
    /// The pipeline the execution belongs to.
    pub pipeline: String,
    /// The execution's run number.
    pub run: u64,
    /// The stage the step belongs to.
    pub stage: String,
    /// The step's name in the pipeline.
    pub step_name: String,
    /// The step type being run.
    pub step_type: String,
    /// 1 for the first attempt, incremented on each retry.
    pub attempt: u32,
    /// The guest path of the workspace, always `/workspace`.
    pub workspace: String,
    /// Environment given by the pipeline (only secrets this step references).
    pub env: BTreeMap<String, String>,
}

impl From<wit::Context> for Context {
    fn from(c: wit::Context) -> Self {
        Context {
            engine: c.engine,
            pipeline: c.pipeline,
            run: c.run,
            stage: c.stage,
            step_name: c.step_name,
            step_type: c.step_type,
            attempt: c.attempt,
            workspace: c.workspace,
            // Inserted one by one: collecting would sort first, and the
            // sort is ~5 KB of a small step's code.
            env: {
                let mut env = BTreeMap::new();
                for kv in c.env {
                    env.insert(kv.key, kv.value);
                }
                env
            },
        }
    }
}

/// What a step returns on success: outputs for later steps and an optional summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Outcome {
    /// Named outputs, readable as `steps.<name>.outputs.<key>`.
    pub outputs: BTreeMap<String, String>,
    /// A one-line summary shown next to the step's state.
    pub summary: Option<String>,
}

impl Outcome {
    /// An outcome with no outputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an output.
    pub fn output(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.outputs.insert(key.into(), value.into());
        self
    }

    /// Sets the summary line.
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }
}

impl From<Outcome> for wit::Outcome {
    fn from(o: Outcome) -> Self {
        wit::Outcome {
            outputs: o
                .outputs
                .into_iter()
                .map(|(key, value)| wit_types::KeyValue { key, value })
                .collect(),
            summary: o.summary,
        }
    }
}

/// Why a step did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The `with` configuration does not fit the step's config type.
    InvalidConfig {
        /// JSON path of the offending field, when known.
        field: Option<String>,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The step ran and failed.
    Failed(String),
}

impl StepError {
    /// A failure with this message.
    pub fn failed(message: impl Into<String>) -> Self {
        StepError::Failed(message.into())
    }

    /// A configuration error on `field`.
    pub fn invalid_config(field: impl Into<String>, message: impl Into<String>) -> Self {
        StepError::InvalidConfig {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::InvalidConfig {
                field: Some(field),
                message,
            } => write!(f, "invalid config at `{field}`: {message}"),
            StepError::InvalidConfig {
                field: None,
                message,
            } => write!(f, "invalid config: {message}"),
            StepError::Failed(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for StepError {}

impl From<StepError> for wit::StepError {
    fn from(e: StepError) -> Self {
        match e {
            StepError::InvalidConfig { field, message } => {
                wit::StepError::InvalidConfig(wit_types::ConfigError { field, message })
            }
            StepError::Failed(message) => wit::StepError::Failed(message),
        }
    }
}

impl From<HostError> for StepError {
    fn from(e: HostError) -> Self {
        StepError::Failed(e.to_string())
    }
}

/// The result type of a step function.
pub type StepResult = Result<Outcome, StepError>;

/// Why a host call was refused or failed. The `?` operator turns it into a
/// [`StepError::Failed`] with the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// Outside the biz's effective capabilities; names capability, biz and engine.
    Denied(String),
    /// An argument is invalid (e.g. a path leaving the workspace).
    InvalidArgument(String),
    /// The call did not finish in its time limit.
    Timeout,
    /// A size limit was passed.
    TooLarge(String),
    /// Any other failure.
    Failed(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Denied(m) => write!(f, "denied: {m}"),
            HostError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            HostError::Timeout => f.write_str("timed out"),
            HostError::TooLarge(m) => write!(f, "too large: {m}"),
            HostError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HostError {}

impl From<wit_types::HostError> for HostError {
    fn from(e: wit_types::HostError) -> Self {
        match e {
            wit_types::HostError::Denied(m) => HostError::Denied(m),
            wit_types::HostError::InvalidArgument(m) => HostError::InvalidArgument(m),
            wit_types::HostError::Timeout => HostError::Timeout,
            wit_types::HostError::TooLarge(m) => HostError::TooLarge(m),
            wit_types::HostError::Failed(m) => HostError::Failed(m),
        }
    }
}

pub(crate) fn key_values<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Vec<wit_types::KeyValue> {
    pairs
        .into_iter()
        .map(|(k, v)| wit_types::KeyValue {
            key: k.into(),
            value: v.into(),
        })
        .collect()
}
