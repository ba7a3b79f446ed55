//! Caps on what one pipeline file may hold, enforced by the parser itself so
//! every entrance (the API, the `.arkc` reader, `arkline validate`,
//! `Engine::apply_pipeline_yaml`) refuses the same inputs, early and cheaply.
//!
//! The file's size is checked before any parsing; the counts of stages, steps,
//! params and triggers while the YAML is read (the tree stops growing at the
//! first item over a cap); name lengths as names are decoded. A cap that is
//! exceeded gives one diagnostic (code `limit-exceeded`) naming the cap, the
//! value found and what to do, instead of a list of follow-on errors.

/// Caps applied while parsing a pipeline file; see [`parse_pipeline_with`].
///
/// The defaults are far above what hand-written pipelines need and low enough
/// that parsing and validating a file at the caps takes milliseconds and a few
/// tens of MiB.
///
/// ```
/// use arkline::model::{Limits, parse_pipeline_with};
///
/// let mut limits = Limits::default();
/// limits.max_steps = 2;
/// let src = "name: p\nstages:\n  - name: s\n    steps:\n      - { name: a, uses: x }\n      - { name: b, uses: x }\n      - { name: c, uses: x }\n";
/// let err = parse_pipeline_with("p.yaml", src, &limits).unwrap_err();
/// assert_eq!(err.0.len(), 1);
/// assert_eq!(err.0[0].code, "limit-exceeded");
/// assert!(err.0[0].message.contains("3 steps"), "{}", err.0[0].message);
/// ```
///
/// [`parse_pipeline_with`]: crate::model::parse_pipeline_with
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest file, in bytes (default 1 MiB).
    pub max_bytes: usize,
    /// Most steps, those of every stage and of `finally` together (default 1,000).
    pub max_steps: usize,
    /// Most stages (default 100).
    pub max_stages: usize,
    /// Most params (default 200).
    pub max_params: usize,
    /// Most triggers (default 50).
    pub max_triggers: usize,
    /// Longest name, in bytes, of a stage, step, param or secret (default 253,
    /// the longest name the store keeps). The pipeline's own name follows the
    /// store's rule, [`check_object_name`](crate::model::check_object_name).
    pub max_name_len: usize,
    /// Most diagnostics reported for one file (default 100); those past it are
    /// summed up in one last note, and are not worked out in full.
    pub max_diagnostics: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_steps: 1000,
            max_stages: 100,
            max_params: 200,
            max_triggers: 50,
            max_name_len: crate::model::meta::MAX_NAME_LEN,
            max_diagnostics: 100,
        }
    }
}

/// What a counting cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    Stages,
    Steps,
    Params,
    Triggers,
}

impl Counted {
    pub(crate) const ALL: [Counted; 4] = [
        Counted::Stages,
        Counted::Steps,
        Counted::Params,
        Counted::Triggers,
    ];

    /// The word for messages (plural).
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Counted::Stages => "stages",
            Counted::Steps => "steps",
            Counted::Params => "params",
            Counted::Triggers => "triggers",
        }
    }

    /// The name of the field of [`Limits`] that caps it.
    pub(crate) fn field(self) -> &'static str {
        match self {
            Counted::Stages => "max_stages",
            Counted::Steps => "max_steps",
            Counted::Params => "max_params",
            Counted::Triggers => "max_triggers",
        }
    }

    pub(crate) fn limit(self, limits: &Limits) -> usize {
        match self {
            Counted::Stages => limits.max_stages,
            Counted::Steps => limits.max_steps,
            Counted::Params => limits.max_params,
            Counted::Triggers => limits.max_triggers,
        }
    }

    pub(crate) fn hint(self) -> &'static str {
        match self {
            Counted::Stages | Counted::Steps => {
                "split the work into several pipelines, or do more in each step"
            }
            Counted::Params => "pass related values together in one `array` param or a file",
            Counted::Triggers => "one webhook trigger can match many events and branches",
        }
    }

    /// Which list a YAML sequence is, from the keys leading to it (`[]` for a
    /// list item): the same in the bare form and under `spec:` of the resource
    /// form.
    pub(crate) fn of_path(path: &[&str]) -> Option<Counted> {
        let path = match path {
            ["spec", rest @ ..] => rest,
            rest => rest,
        };
        match path {
            ["stages"] => Some(Counted::Stages),
            ["stages", "[]", "steps"] | ["finally"] => Some(Counted::Steps),
            ["params"] => Some(Counted::Params),
            ["triggers"] => Some(Counted::Triggers),
            _ => None,
        }
    }
}
