//! The process-per-step peer: the `upper` step as a native binary, run once per step
//! the way container- and process-based CI plugins run. Prints its argument
//! upper-cased.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(text) = std::env::args().nth(1) else {
        eprintln!("usage: upper TEXT");
        return ExitCode::from(2);
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{}", text.to_uppercase()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upper: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
