//! The execution's step graph: each step (one node per matrix cell), where its
//! status lives, and what it waits for — its `needs`, or every step of the
//! previous stage.

use std::collections::BTreeMap;

use super::status::Loc;
use crate::model::{PipelineSpec, Step};

/// One run of a step: a step, or one cell of its matrix.
#[derive(Debug, Clone)]
pub(super) struct Node {
    /// Where its status lives (`Stage(i, j)`: the `j`th run of stage `i`).
    pub(super) loc: Loc,
    /// The step as written, renamed to the run's name for a matrix cell.
    pub(super) step: Step,
    /// The cell's values, for a matrix cell.
    pub(super) matrix: Option<BTreeMap<String, serde_json::Value>>,
    /// The first node of the matrix this cell belongs to (its group).
    pub(super) group: Option<usize>,
    /// The nodes it waits for.
    pub(super) deps: Vec<usize>,
    /// Whether `deps` are the previous stage's steps (no `needs` written).
    pub(super) implicit: bool,
    /// Every node it waits for, directly or not.
    pub(super) ancestors: Vec<usize>,
    /// Whether its `if` (or its stage's) calls a status function, which then
    /// alone decides whether it runs after a failure or an abort.
    pub(super) checks_status: bool,
}

impl Node {
    /// The stage it runs in; `None` for `finally`.
    pub(super) fn stage(&self) -> Option<usize> {
        match self.loc {
            Loc::Stage(i, _) => Some(i),
            Loc::Finally(_) => None,
        }
    }
}

/// The nodes of a spec: every stage's runs in order, then `finally`'s. Names
/// `needs` cannot resolve (validation reports them) are left out, so an
/// unvalidated spec still runs rather than hangs.
pub(super) fn plan(spec: &PipelineSpec) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    // Step name (and cell name) → its nodes.
    let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut previous: Vec<usize> = Vec::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        let first_of_stage = nodes.len();
        let mut pending_needs: Vec<(usize, &Vec<String>)> = Vec::new();
        for step in &stage.steps {
            let first = nodes.len();
            for instance in step.instances() {
                let j = nodes.len() - first_of_stage;
                let mut renamed = step.clone();
                renamed.name.clone_from(&instance.name);
                let k = nodes.len();
                if instance.matrix.is_some() {
                    by_name.entry(instance.name.clone()).or_default().push(k);
                }
                by_name.entry(step.name.clone()).or_default().push(k);
                nodes.push(Node {
                    loc: Loc::Stage(i, j),
                    checks_status: checks_status(step, stage.when.as_ref()),
                    step: renamed,
                    group: instance.matrix.as_ref().map(|_| first),
                    matrix: instance.matrix,
                    deps: Vec::new(),
                    implicit: step.needs.is_empty(),
                    ancestors: Vec::new(),
                });
                if step.needs.is_empty() {
                    nodes[k].deps.clone_from(&previous);
                } else {
                    pending_needs.push((k, &step.needs));
                }
            }
        }
        // Needs resolve once the whole stage is known (a step may need a later
        // one of its stage).
        for (k, needs) in pending_needs {
            let own = nodes[k].step.name.clone();
            let mut deps = Vec::new();
            for need in needs {
                for &d in by_name.get(need).into_iter().flatten() {
                    // Never itself, nor a cell of its own matrix.
                    let same = nodes[d].step.name == own
                        || (nodes[k].group.is_some() && nodes[d].group == nodes[k].group);
                    if !same && !deps.contains(&d) {
                        deps.push(d);
                    }
                }
            }
            nodes[k].deps = deps;
        }
        if nodes.len() > first_of_stage {
            previous = (first_of_stage..nodes.len()).collect();
        }
    }
    for (j, step) in spec.finally.iter().enumerate() {
        let first = nodes.len();
        for (c, instance) in step.instances().into_iter().enumerate() {
            let mut renamed = step.clone();
            renamed.name.clone_from(&instance.name);
            nodes.push(Node {
                loc: Loc::Finally(finally_index(spec, j) + c),
                checks_status: checks_status(step, None),
                step: renamed,
                group: instance.matrix.as_ref().map(|_| first),
                matrix: instance.matrix,
                deps: Vec::new(),
                implicit: true,
                ancestors: Vec::new(),
            });
        }
    }
    // Transitive closures (a cycle an unvalidated spec carries ends the walk).
    for k in 0..nodes.len() {
        let mut seen = vec![false; nodes.len()];
        let mut stack = nodes[k].deps.clone();
        let mut out = Vec::new();
        while let Some(d) = stack.pop() {
            if d != k && !seen[d] {
                seen[d] = true;
                out.push(d);
                stack.extend(nodes[d].deps.iter().copied());
            }
        }
        out.sort_unstable();
        nodes[k].ancestors = out;
    }
    nodes
}

/// Whether the step's or its stage's `if` calls a status function.
fn checks_status(step: &Step, stage_when: Option<&crate::model::When>) -> bool {
    [step.when.as_ref(), stage_when]
        .into_iter()
        .flatten()
        .filter_map(|w| w.if_expr.as_deref())
        .any(|text| crate::model::expr::parse(text).is_ok_and(|e| e.uses_status_function()))
}

/// The index in `status.finally` of the first run of `finally[j]`.
fn finally_index(spec: &PipelineSpec, j: usize) -> usize {
    spec.finally[..j]
        .iter()
        .map(|s| s.matrix.as_ref().map_or(1, |m| m.cells().len()))
        .sum()
}

/// The status entries of a spec's runs: per stage, then `finally`.
pub(super) fn run_names(spec: &PipelineSpec) -> (Vec<Vec<String>>, Vec<String>) {
    let names = |steps: &[Step]| -> Vec<String> {
        steps
            .iter()
            .flat_map(|s| s.instances().into_iter().map(|i| i.name))
            .collect()
    };
    (
        spec.stages.iter().map(|s| names(&s.steps)).collect(),
        names(&spec.finally),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PipelineSpec {
        let text = format!(
            "apiVersion: arkline.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: p}}\nspec:\n{yaml}"
        );
        crate::model::parse_pipeline("p.yaml", &text)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .spec
    }

    #[test]
    fn stages_are_implicit_needs_and_needs_replace_them() {
        let s = spec(
            "  stages:
    - name: one
      steps:
        - {name: a, uses: x}
        - {name: b, uses: x}
    - name: two
      steps:
        - {name: c, uses: x}
        - {name: d, uses: x, needs: [a]}
        - {name: e, uses: x, needs: [c, d]}
  finally:
    - {name: f, uses: x}
",
        );
        let nodes = plan(&s);
        let names: Vec<&str> = nodes.iter().map(|n| n.step.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(nodes[2].deps, [0, 1]);
        assert!(nodes[2].implicit);
        assert_eq!(nodes[3].deps, [0]);
        assert_eq!(nodes[4].deps, [2, 3]);
        assert_eq!(nodes[4].ancestors, [0, 1, 2, 3]);
        assert_eq!(nodes[3].ancestors, [0]);
        assert_eq!(nodes[5].loc, Loc::Finally(0));
    }

    #[test]
    fn a_matrix_is_one_node_per_cell_and_needs_of_it_wait_for_all() {
        let s = spec(
            "  stages:
    - name: one
      steps:
        - name: build
          uses: x
          matrix: {os: [a, b], v: [1, 2, 3], exclude: [{os: b, v: 3}]}
        - {name: after, uses: x, needs: build}
        - {name: one-cell, uses: x, needs: ['build (a, 2)']}
",
        );
        let nodes = plan(&s);
        let names: Vec<&str> = nodes.iter().map(|n| n.step.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "build (a, 1)",
                "build (a, 2)",
                "build (a, 3)",
                "build (b, 1)",
                "build (b, 2)",
                "after",
                "one-cell"
            ]
        );
        assert_eq!(nodes[5].deps, [0, 1, 2, 3, 4]);
        assert_eq!(nodes[6].deps, [1]);
        assert_eq!(nodes[3].group, Some(0));
        assert_eq!(nodes[3].loc, Loc::Stage(0, 3));
        let (stages, _) = run_names(&s);
        assert_eq!(stages[0].len(), 7);
    }
}
