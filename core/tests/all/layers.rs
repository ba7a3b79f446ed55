//! The layers of `core/src` point one way (ARCHITECTURE.md, "Layers"): each
//! top-level module names only the modules below it, and no two files import
//! each other through a chain. This test reads the `crate::…` paths of every
//! file (comments and string literals left out) and fails naming the file and
//! the import.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// What each top-level module may name, lowest first. Anything else is an
/// arrow pointing up (or sideways between branches that must not know each
/// other, such as `store` and `host`).
const LAYERS: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("metrics", &[]),
    ("native", &[]),
    ("store", &["model", "metrics"]),
    ("controller", &["model", "store"]),
    ("host", &["native", "metrics"]),
    ("ark", &["host"]),
    ("provenance", &["ark", "host"]),
    (
        "runtime",
        &["ark", "host", "native", "metrics", "provenance"],
    ),
    (
        "pipeline",
        &[
            "model",
            "store",
            "controller",
            "host",
            "ark",
            "runtime",
            "native",
            "metrics",
            "provenance",
        ],
    ),
    (
        "engine",
        &[
            "model",
            "store",
            "controller",
            "host",
            "ark",
            "runtime",
            "native",
            "metrics",
            "pipeline",
            "provenance",
        ],
    ),
    (
        "container",
        &[
            "model",
            "store",
            "controller",
            "host",
            "ark",
            "runtime",
            "native",
            "metrics",
            "pipeline",
            "engine",
            "provenance",
        ],
    ),
];

/// One import that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    import: String,
    why: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: `{}`: {}",
            self.file, self.line, self.import, self.why
        )
    }
}

/// The code of a file with comments and string literals blanked out (lines kept).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    }
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    }
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' must not open a string.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let len = if rest.starts_with('\\') {
                    rest.find('\'').map(|i| i + 1)
                } else if rest.chars().nth(1) == Some('\'') {
                    Some(2)
                } else {
                    None
                };
                out.push('\'');
                if let Some(len) = len {
                    for _ in 0..len {
                        chars.next();
                    }
                    out.push('\'');
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The identifiers of a path, `a::b::C<…>` → `[a, b, C]`, up to the first
/// segment that is not one (`{`, `*`, a generic argument).
fn segments(tail: &str) -> Vec<String> {
    tail.split("::")
        .map_while(|seg| {
            let ident: String = seg
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!ident.is_empty()).then_some(ident)
        })
        .collect()
}

/// Every `crate::a::b…` path in `code`, with its line number (1-based).
fn crate_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            let after = &rest[i + "crate::".len()..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `$crate::` or `my_crate::`
            }
            let path = segments(after);
            if !path.is_empty() {
                found.push((n + 1, path));
            }
        }
    }
    found
}

/// The module path of a source file: `pipeline/executor/attempt.rs` →
/// `["pipeline", "executor", "attempt"]`; `lib.rs` → `[]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_end_matches(".rs").to_owned();
    }
    if parts == ["lib"] { Vec::new() } else { parts }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Checks the layer rules and the absence of import circles among the files
/// under `src`.
fn check(src: &Path) -> Vec<Violation> {
    let layers: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(src).expect("under src");
            (module_of(rel), rel.display().to_string())
        })
        .collect();
    let mut violations = Vec::new();
    // file → files it imports (not counting its own ancestors: a child module
    // implementing its parent's type names the parent).
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = fs::read_to_string(src.join(file)).expect("read source");
        let code = code_only(&text);
        let mut imported = Vec::new();
        for (line, path) in crate_paths(&code) {
            imported.push((line, path.clone()));
        }
        // `super::` paths, resolved against the module's own path.
        for (n, l) in code.lines().enumerate() {
            let mut rest = l;
            while let Some(i) = rest.find("super::") {
                let before = rest[..i].chars().last();
                rest = &rest[i + "super::".len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue; // counted with the first `super::` of a chain
                }
                let mut base = module.clone();
                // A file `a/b.rs` is module a::b; `super` is a.
                base.pop();
                let mut tail = rest;
                while let Some(t) = tail.strip_prefix("super::") {
                    base.pop();
                    tail = t;
                }
                base.extend(segments(tail));
                imported.push((n + 1, base));
            }
        }
        let Some(top) = module.first() else { continue };
        for (line, path) in imported {
            let Some(target_top) = path.first() else {
                continue;
            };
            if target_top != top && modules.contains_key(&path[..1]) {
                match layers.get(top.as_str()) {
                    None => violations.push(Violation {
                        file: file.clone(),
                        line,
                        import: format!("crate::{}", path.join("::")),
                        why: format!(
                            "module `{top}` has no place in the layer list; add it to LAYERS in core/tests/all/layers.rs and to ARCHITECTURE.md"
                        ),
                    }),
                    Some(allowed) if !allowed.contains(&target_top.as_str()) => {
                        violations.push(Violation {
                            file: file.clone(),
                            line,
                            import: format!("crate::{}", path.join("::")),
                            why: format!(
                                "`{top}` may not name `{target_top}` (it may name: {}); move the item down or pass it in",
                                if allowed.is_empty() { "nothing of the crate".to_owned() } else { allowed.join(", ") }
                            ),
                        });
                    }
                    Some(_) => {}
                }
            }
            // The deepest existing module file the path names.
            let target = (1..=path.len())
                .rev()
                .find_map(|n| modules.get(&path[..n]))
                .cloned();
            if let Some(target) = target {
                let target_module = module_of(Path::new(&target));
                let is_ancestor = module.starts_with(&target_module);
                if target != *file && !is_ancestor {
                    edges.entry(file.clone()).or_default().insert(target);
                }
            }
        }
    }
    // Circles among files: a depth-first search for a back edge.
    let mut state: BTreeMap<String, u8> = BTreeMap::new(); // 1 on the stack, 2 done
    let mut stack: Vec<String> = Vec::new();
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        violations: &mut Vec<Violation>,
    ) {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|s| s == next).expect("on stack");
                    let mut circle = stack[start..].to_vec();
                    circle.push(next.clone());
                    violations.push(Violation {
                        file: node.to_owned(),
                        line: 0,
                        import: next.clone(),
                        why: format!("import circle: {}", circle.join(" → ")),
                    });
                }
                Some(_) => {}
                None => visit(next, edges, state, stack, violations),
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
    }
    let nodes: Vec<String> = edges.keys().cloned().collect();
    for node in nodes {
        if !state.contains_key(&node) {
            visit(&node, &edges, &mut state, &mut stack, &mut violations);
        }
    }
    violations
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn layers_point_one_way_and_files_form_no_circle() {
    let violations = check(&src_dir());
    assert!(
        violations.is_empty(),
        "core/src breaks its layering (ARCHITECTURE.md, \"Layers\"):\n{}",
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A copy of `core/src` with `extra` appended to `file`.
fn tampered(file: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    for f in files {
        let rel = f.strip_prefix(src_dir()).expect("under src");
        let to = dir.path().join(rel);
        fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        let mut text = fs::read_to_string(&f).expect("read");
        if rel == Path::new(file) {
            text.push_str(extra);
        }
        fs::write(to, text).expect("write");
    }
    dir
}

#[test]
fn an_upward_import_is_caught_and_named() {
    let dir = tampered(
        "model/meta.rs",
        "\n#[allow(unused_imports)]\nuse crate::store::Store;\n",
    );
    let violations = check(dir.path());
    assert_eq!(violations.len(), 1, "{violations:?}");
    let v = &violations[0];
    assert_eq!(v.file, "model/meta.rs");
    assert_eq!(v.import, "crate::store::Store");
    assert!(v.why.contains("`model` may not name `store`"), "{v}");

    let dir = tampered(
        "host/process.rs",
        "\nfn _f(_: crate::runtime::CancelToken) {}\n",
    );
    let violations = check(dir.path());
    assert!(
        violations
            .iter()
            .any(|v| v.file == "host/process.rs" && v.why.contains("`host` may not name `runtime`")),
        "{violations:?}"
    );

    // Comments and strings do not count.
    let dir = tampered(
        "ark/manifest.rs",
        "\n// see crate::pipeline::Engine\nconst _S: &str = \"crate::engine::Engine\";\n",
    );
    assert!(check(dir.path()).is_empty());
}

#[test]
fn an_import_circle_between_siblings_is_caught() {
    // deployment.rs already names context.rs; the reverse closes a circle.
    let dir = tampered(
        "pipeline/context.rs",
        "\n#[allow(unused_imports)]\nuse crate::pipeline::deployment::DEPLOYMENT_NAME;\n",
    );
    let violations = check(dir.path());
    assert!(
        violations.iter().any(|v| v.why.contains("import circle")
            && v.why.contains("pipeline/context.rs")
            && v.why.contains("pipeline/deployment.rs")),
        "{violations:?}"
    );
}
