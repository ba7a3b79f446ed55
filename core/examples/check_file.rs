//! Checks pipeline files and prints their diagnostics:
//! `cargo run --example check_file -- FILE...` (exit status 1 on errors).

use std::io::IsTerminal;

fn main() {
    let color = std::io::stderr().is_terminal();
    let render = |d: &arkline::model::Diagnostic, source: &str| {
        if color {
            d.render_colored(source)
        } else {
            d.render(source)
        }
    };
    let mut failed = false;
    for path in std::env::args().skip(1) {
        let source = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot read {path}: {e}");
                failed = true;
                continue;
            }
        };
        match arkline::model::parse_pipeline_file(&path, &source) {
            Ok(parsed) => {
                for w in &parsed.warnings {
                    eprint!("{}", render(w, &source));
                }
                eprintln!("{path}: ok");
            }
            Err(diagnostics) => {
                for d in &diagnostics.0 {
                    eprintln!("{}", render(d, &source));
                }
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
