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

#[cfg(test)]
mod tests {
    //! Caps and linear work on generated hostile inputs. Work is counted (see
    //! `model::work`), not timed: a quadratic version fails the bounds below.

    use super::*;
    use crate::model::{Diagnostics, parse_pipeline_with, work};

    fn one_step(name: &str, extra: &str) -> String {
        format!(
            "name: p\nstages:\n  - name: s\n    steps:\n      - name: {name}\n        uses: shell\n{extra}"
        )
    }

    fn refused(src: &str, limits: &Limits) -> Diagnostics {
        parse_pipeline_with("p.yaml", src, limits).expect_err("refused")
    }

    #[test]
    fn a_list_over_its_cap_gives_one_diagnostic_with_the_count() {
        let steps: String = (0..20_000)
            .map(|i| format!("      - {{name: s{i}, uses: shell}}\n"))
            .collect();
        let src = format!("name: p\nstages:\n  - name: s\n    steps:\n{steps}");
        let limits = Limits {
            max_bytes: usize::MAX,
            ..Limits::default()
        };
        let diags = refused(&src, &limits);
        assert_eq!(diags.0.len(), 1, "{diags}");
        let d = &diags.0[0];
        assert_eq!(d.code, "limit-exceeded");
        assert!(
            d.message.contains("20000 steps") && d.message.contains("limit of 1000"),
            "{}",
            d.message
        );
        // It points at the first step over the cap.
        assert_eq!(d.span.map(|s| s.line), Some(5 + 1000));
        // The same file in the resource form is counted the same way.
        let resource = format!(
            "apiVersion: arkline.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: p}}\nspec:\n  stages:\n    - name: s\n      steps:\n{}",
            steps.replace("      - ", "        - ")
        );
        let diags = refused(&resource, &limits);
        assert_eq!(diags.0.len(), 1, "{diags}");
        assert!(diags.0[0].message.contains("20000 steps"));
    }

    #[test]
    fn every_count_has_its_cap() {
        let limits = Limits::default();
        let many =
            |n: usize, item: &dyn Fn(usize) -> String| -> String { (0..n).map(item).collect() };
        let stages = many(101, &|i| {
            format!("  - name: st{i}\n    steps: [{{name: s{i}, uses: shell}}]\n")
        });
        let params = many(201, &|i| format!("  - name: p{i}\n"));
        let triggers = many(51, &|_| "  - type: manual\n".to_owned());
        let finally = many(1001, &|i| format!("  - {{name: f{i}, uses: shell}}\n"));
        let stage = "stages:\n  - name: s\n    steps: [{name: a, uses: shell}]\n";
        for (src, expected) in [
            (format!("name: p\nstages:\n{stages}"), "101 stages"),
            (format!("name: p\nparams:\n{params}{stage}"), "201 params"),
            (
                format!("name: p\ntriggers:\n{triggers}{stage}"),
                "51 triggers",
            ),
            (format!("name: p\n{stage}finally:\n{finally}"), "1002 steps"),
        ] {
            let diags = refused(&src, &limits);
            assert_eq!(diags.0.len(), 1, "{diags}");
            assert_eq!(diags.0[0].code, "limit-exceeded");
            assert!(
                diags.0[0].message.contains(expected),
                "{}",
                diags.0[0].message
            );
        }
        // At the caps, all is well.
        let at_cap = many(100, &|i| {
            format!("  - name: st{i}\n    steps: [{{name: s{i}, uses: shell}}]\n")
        });
        assert!(
            parse_pipeline_with("p.yaml", &format!("name: p\nstages:\n{at_cap}"), &limits).is_ok()
        );
    }

    #[test]
    fn a_file_over_the_byte_cap_is_refused_before_parsing() {
        let src = one_step(
            "a",
            &format!("        with: {{x: \"{}\"}}\n", "y".repeat(2 << 20)),
        );
        work::take();
        let diags = refused(&src, &Limits::default());
        assert_eq!(work::take(), 0);
        assert_eq!(diags.0.len(), 1);
        assert_eq!(diags.0[0].code, "limit-exceeded");
        assert!(diags.0[0].message.contains(&format!("{} bytes", src.len())));
        assert!(diags.0[0].message.contains("1048576"));
    }

    #[test]
    fn long_names_are_refused() {
        let long = "a".repeat(254);
        let diags = refused(&one_step(&long, ""), &Limits::default());
        assert!(
            diags.0.iter().any(|d| d.code == "limit-exceeded"
                && d.message.contains("254 bytes")
                && d.message.contains("max_name_len")),
            "{diags}"
        );
        assert!(
            parse_pipeline_with(
                "p.yaml",
                &one_step(&"a".repeat(253), ""),
                &Limits::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn pipeline_names_follow_the_store_rule() {
        for (name, why) in [
            ("\"../../etc/passwd\"", "contains `/`"),
            ("\"a\\0b\"", "control character"),
            (&"n".repeat(10_000), "10000 bytes long"),
        ] {
            let src = format!(
                "name: {name}\nstages:\n  - name: s\n    steps: [{{name: a, uses: shell}}]\n"
            );
            let diags = refused(&src, &Limits::default());
            assert!(
                diags
                    .0
                    .iter()
                    .any(|d| d.code == "invalid-name" && d.message.contains(why)),
                "{name}: {diags}"
            );
        }
        let src =
            "name: p\nengine: \"x/y\"\nstages:\n  - name: s\n    steps: [{name: a, uses: shell}]\n";
        assert_eq!(refused(src, &Limits::default()).0[0].code, "invalid-name");
    }

    #[test]
    fn many_unknown_keys_report_the_cap_in_linear_work() {
        let keys: String = (0..45_000)
            .map(|i| format!("        unknown_key_{i:06}: 1\n"))
            .collect();
        let src = one_step("a", &keys);
        let limits = Limits {
            max_bytes: usize::MAX,
            ..Limits::default()
        };
        work::take();
        let diags = refused(&src, &limits);
        let rendered = diags.render(&src);
        let spent = work::take();
        assert_eq!(diags.0.len(), 101, "100 diagnostics and one note");
        let note = diags.0.last().expect("a note");
        assert_eq!(note.code, "more-diagnostics");
        assert!(note.message.starts_with("44900 more"), "{}", note.message);
        assert_eq!(rendered.matches("error[unknown-field]").count(), 100);
        assert!(
            spent < src.len() as u64,
            "{spent} steps for {} bytes",
            src.len()
        );
    }

    #[test]
    fn many_references_in_one_scalar_are_positioned_in_linear_work() {
        // Not ASCII, so columns need counting characters.
        let value = "é${{ params.b }}".repeat(100_000);
        let src = format!(
            "name: p\nparams: [{{name: a}}]\n{}",
            one_step("a", "").replacen("name: p\n", "", 1)
        ) + &format!("        env: {{X: \"{value}\"}}\n");
        let limits = Limits {
            max_bytes: usize::MAX,
            ..Limits::default()
        };
        work::take();
        let diags = refused(&src, &limits);
        let rendered = diags.render(&src);
        let spent = work::take();
        assert_eq!(diags.0.len(), 101);
        assert_eq!(diags.0[0].code, "unknown-param");
        assert!(diags.0[100].message.starts_with("99900 more"));
        // The 100th reference is underlined where it is.
        let d = &diags.0[99];
        let span = d.span.expect("span");
        assert_eq!(&src[span.start..span.end], "params.b");
        assert_eq!(
            span.column,
            src[..span.start]
                .rsplit('\n')
                .next()
                .unwrap_or_default()
                .chars()
                .count()
                + 1
        );
        assert_eq!(rendered.matches("error[unknown-param]").count(), 100);
        assert!(
            spent < 4 * src.len() as u64,
            "{spent} steps for {} bytes",
            src.len()
        );
        // Declared, the same references cost no positioning at all.
        let ok = src.replace("params.b", "params.a");
        work::take();
        assert!(parse_pipeline_with("p.yaml", &ok, &limits).is_ok());
        assert!(work::take() < 4 * src.len() as u64);
    }

    #[test]
    fn suggestions_for_long_names_cost_bounded_work() {
        let name = |seed: usize| -> String { format!("{seed:02}{}", "ab".repeat(1500)) };
        let params: String = (0..40)
            .map(|i| format!("  - name: p{}\n", name(i)))
            .collect();
        let env: String = (0..40)
            .map(|i| format!("          E{i}: \"${{{{ params.q{} }}}}\"\n", name(i)))
            .collect();
        let src = format!(
            "name: p\nparams:\n{params}stages:\n  - name: s\n    steps:\n      - name: a\n        uses: shell\n        env:\n{env}"
        );
        let limits = Limits {
            max_name_len: 4000,
            ..Limits::default()
        };
        work::take();
        let diags = refused(&src, &limits);
        let spent = work::take();
        assert_eq!(diags.errors().count(), 40, "{diags}");
        assert!(diags.0.iter().all(|d| d.code == "unknown-param"));
        assert!(diags.0.iter().all(|d| {
            !d.hint
                .as_deref()
                .unwrap_or_default()
                .contains("did you mean")
        }));
        // 40 × 40 comparisons of 3,000 characters would be 1.4e10 cells.
        assert!(spent < 1_000_000, "{spent}");
    }

    #[test]
    fn suggestions_compare_a_bounded_number_of_candidates() {
        let candidates: Vec<String> = (0..100_000).map(|i| format!("step-{i:07}")).collect();
        work::take();
        let found = crate::model::diagnostic::did_you_mean(
            "step-0000x01",
            candidates.iter().map(String::as_str),
        );
        assert_eq!(found, Some("step-0000001"));
        // At most 1,000 candidates, each within a band around the diagonal.
        assert!(work::take() < 1000 * 12 * 9);
    }
}
