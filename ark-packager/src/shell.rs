//! Status output in cargo's style: `{verb:>12} message` on stderr, the verb in bold
//! green (errors in bold red, warnings in bold yellow).
//!
//! `--color auto` colours only a terminal and honours `NO_COLOR` (and
//! `CLICOLOR`/`CLICOLOR_FORCE`, through `anstream`); `never` writes no escape
//! codes. The choice is passed on to the cargo that builds the guest, which does
//! not read `NO_COLOR` itself.

use std::io::Write;

use anstream::ColorChoice;
use anstyle::{AnsiColor, Style};

/// How much to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors only.
    Quiet,
    /// Status lines.
    Normal,
    /// Status lines and the commands run.
    Verbose,
}

/// `--color` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Color {
    /// Colour when stderr is a terminal.
    #[default]
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// Where status lines go.
#[derive(Debug)]
pub struct Shell {
    verbosity: Verbosity,
    choice: ColorChoice,
}

const GREEN: Style = AnsiColor::Green.on_default().bold();
const CYAN: Style = AnsiColor::Cyan.on_default().bold();
const YELLOW: Style = AnsiColor::Yellow.on_default().bold();
const RED: Style = AnsiColor::Red.on_default().bold();

impl Shell {
    /// A shell with the given colour choice and verbosity.
    pub fn new(color: Color, verbosity: Verbosity) -> Shell {
        let choice = match color {
            Color::Auto => ColorChoice::Auto,
            Color::Always => ColorChoice::Always,
            Color::Never => ColorChoice::Never,
        };
        Shell { verbosity, choice }
    }

    /// The verbosity.
    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    fn print(&self, style: Style, verb: &str, message: &str, justify: bool) {
        let mut err = anstream::AutoStream::new(std::io::stderr(), self.choice).lock();
        let _ = if justify {
            writeln!(err, "{style}{verb:>12}{style:#} {message}")
        } else {
            writeln!(err, "{style}{verb}{style:#}: {message}")
        };
    }

    /// A status line, e.g. `   Packaging shell v0.1.0`.
    pub fn status(&self, verb: &str, message: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Normal {
            self.print(GREEN, verb, message.as_ref(), true);
        }
    }

    /// A line shown only with `--verbose`.
    pub fn verbose(&self, verb: &str, message: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Verbose {
            self.print(CYAN, verb, message.as_ref(), true);
        }
    }

    /// A warning.
    pub fn warn(&self, message: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Normal {
            self.print(YELLOW, "warning", message.as_ref(), false);
        }
    }

    /// An error with its chain of causes.
    pub fn error(&self, error: &anyhow::Error) {
        let mut message = error.to_string();
        for cause in error.chain().skip(1) {
            message.push_str(&format!("\n\nCaused by:\n  {cause}"));
        }
        self.print(RED, "error", &message, false);
    }

    /// Whether stdout output should be coloured.
    pub fn color_choice(&self) -> ColorChoice {
        self.choice
    }

    /// The `--color` to give a cargo `cargo ark` runs: what was asked for, `never`
    /// when `NO_COLOR` is set under `auto`, else nothing (cargo decides).
    pub fn cargo_color(&self) -> Option<&'static str> {
        match self.choice {
            ColorChoice::Always | ColorChoice::AlwaysAnsi => Some("always"),
            ColorChoice::Never => Some("never"),
            ColorChoice::Auto if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) => {
                Some("never")
            }
            ColorChoice::Auto => None,
        }
    }
}
