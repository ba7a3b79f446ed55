//! The `producers` custom sections of a component: which languages and tools
//! made it (the [tool-conventions] format), for `cargo ark package
//! --component` and `cargo ark inspect` to name a component's source language.
//!
//! [tool-conventions]: https://github.com/WebAssembly/tool-conventions/blob/main/ProducersSection.md

use std::collections::BTreeMap;

/// Field name → the `(name, version)` values of every `producers` section
/// in the binary, its nested core modules and components included
/// (duplicates dropped, order kept).
pub type Producers = BTreeMap<String, Vec<(String, String)>>;

/// How deep nested components are followed.
const MAX_NESTING: usize = 8;

/// Reads every `producers` section of `wasm` (a component or a core
/// module); a malformed binary gives what was read before the fault.
pub fn producers(wasm: &[u8]) -> Producers {
    let mut out = Producers::new();
    scan(wasm, 0, &mut out);
    out
}

/// The source language of a component, from its `producers` sections: the
/// `language` field (`Rust`, `Python`, `JavaScript`, …), or else what the
/// tools that processed it imply (componentize-py: Python; componentize-js
/// or jco: JavaScript; rustc: Rust).
pub fn source_language(wasm: &[u8]) -> Option<String> {
    // Wrappers that record no tool of their own: componentize-py embeds
    // CPython (`libpython3.*`) beside its runtime, componentize-js
    // StarlingMonkey.
    for (marker, language) in [
        (&b"componentize_py_runtime"[..], "Python"),
        (b"libpython3.", "Python"),
        (b"StarlingMonkey", "JavaScript"),
        (b"componentize-js", "JavaScript"),
    ] {
        if memchr::memmem::find(wasm, marker).is_some() {
            return Some(language.to_owned());
        }
    }
    let p = producers(wasm);
    // A wrapping tool names the language before any Rust tool does: the
    // wrappers' runtimes are built with Rust tools too. `wit-bindgen-rust`
    // counts as Rust: a component built with `strip = "symbols"` (the `ark`
    // profile) keeps only the producers wit-component writes, which name
    // the bindings generator but not `rustc`.
    let by_tool = |tools: &[(String, String)]| {
        let names: Vec<String> = tools.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        if names.iter().any(|n| n.contains("componentize-py")) {
            Some("Python")
        } else if names
            .iter()
            .any(|n| n.contains("componentize-js") || n.contains("jco"))
        {
            Some("JavaScript")
        } else if names
            .iter()
            .any(|n| n == "rustc" || n == "wit-bindgen-rust")
        {
            Some("Rust")
        } else {
            None
        }
    };
    if let Some(lang) = p.get("processed-by").and_then(|t| by_tool(t)) {
        // A wrapper's runtime (CPython, StarlingMonkey) is written in C or
        // Rust; the tool that wrapped the source says what the author wrote.
        if lang != "Rust" {
            return Some(lang.to_owned());
        }
    }
    if let Some((name, _)) = p.get("language").and_then(|l| l.first()) {
        return Some(name.clone());
    }
    p.get("processed-by")
        .and_then(|t| by_tool(t))
        .map(str::to_owned)
}

fn leb_u32(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut result: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        result |= u32::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(result);
        }
    }
    None
}

fn string<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a str> {
    let len = leb_u32(bytes, at)? as usize;
    let end = at.checked_add(len)?;
    let s = std::str::from_utf8(bytes.get(*at..end)?).ok()?;
    *at = end;
    Some(s)
}

fn scan(wasm: &[u8], depth: usize, out: &mut Producers) {
    if depth > MAX_NESTING || wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return;
    }
    // Layer 1 (component) or 0 (core module) decides which section ids
    // nest a binary.
    let component = wasm[6..8] == [1, 0];
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let Some(size) = leb_u32(wasm, &mut at) else {
            return;
        };
        let Some(end) = at.checked_add(size as usize).filter(|e| *e <= wasm.len()) else {
            return;
        };
        let body = &wasm[at..end];
        match id {
            0 => {
                let mut p = 0;
                if string(body, &mut p) == Some("producers") {
                    read_producers(&body[p..], out);
                }
            }
            // Core module (1) and nested component (4) sections of a
            // component hold whole binaries.
            1 | 4 if component => scan(body, depth + 1, out),
            _ => {}
        }
        at = end;
    }
}

fn read_producers(body: &[u8], out: &mut Producers) {
    let mut at = 0;
    let Some(fields) = leb_u32(body, &mut at) else {
        return;
    };
    for _ in 0..fields {
        let Some(field) = string(body, &mut at) else {
            return;
        };
        let Some(count) = leb_u32(body, &mut at) else {
            return;
        };
        for _ in 0..count {
            let (Some(name), Some(version)) = (string(body, &mut at), string(body, &mut at)) else {
                return;
            };
            let values = out.entry(field.to_owned()).or_default();
            let value = (name.to_owned(), version.to_owned());
            if !values.contains(&value) {
                values.push(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leb(n: usize, out: &mut Vec<u8>) {
        let mut n = n;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn s(text: &str, out: &mut Vec<u8>) {
        leb(text.len(), out);
        out.extend_from_slice(text.as_bytes());
    }

    fn producers_section(fields: &[(&str, &[(&str, &str)])]) -> Vec<u8> {
        let mut body = Vec::new();
        s("producers", &mut body);
        leb(fields.len(), &mut body);
        for (field, values) in fields {
            s(field, &mut body);
            leb(values.len(), &mut body);
            for (n, v) in *values {
                s(n, &mut body);
                s(v, &mut body);
            }
        }
        let mut section = vec![0];
        leb(body.len(), &mut section);
        section.extend(body);
        section
    }

    fn binary(component: bool, sections: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"\0asm".to_vec();
        out.extend(if component {
            [0x0d, 0, 1, 0]
        } else {
            [1, 0, 0, 0]
        });
        for section in sections {
            out.extend(section);
        }
        out
    }

    #[test]
    fn nested_modules_are_read_and_the_wrapping_tool_names_the_language() {
        let module = binary(
            false,
            &[producers_section(&[
                ("language", &[("C11", "")]),
                ("processed-by", &[("clang", "18")]),
            ])],
        );
        let mut core = vec![1];
        leb(module.len(), &mut core);
        core.extend(&module);
        let component = binary(
            true,
            &[
                core,
                producers_section(&[("processed-by", &[("componentize-py", "0.25.1")])]),
            ],
        );
        let p = producers(&component);
        assert_eq!(p["language"], [("C11".to_owned(), String::new())]);
        assert_eq!(p["processed-by"].len(), 2);
        assert_eq!(source_language(&component).as_deref(), Some("Python"));
    }

    #[test]
    fn a_rust_component_says_rust_and_garbage_says_nothing() {
        let rust = binary(
            true,
            &[producers_section(&[
                ("language", &[("Rust", "")]),
                ("processed-by", &[("rustc", "1.95.0")]),
            ])],
        );
        assert_eq!(source_language(&rust).as_deref(), Some("Rust"));
        // Stripped of its core module's producers: wit-component's remain.
        let stripped = binary(
            true,
            &[producers_section(&[(
                "processed-by",
                &[("wit-component", "0.244.0"), ("wit-bindgen-rust", "0.45.0")],
            )])],
        );
        assert_eq!(source_language(&stripped).as_deref(), Some("Rust"));
        assert_eq!(source_language(b"\0asm\x0d\0\x01\0\x00\xff\xff"), None);
        assert!(producers(b"not wasm").is_empty());
    }
}
