//! `--color` and `NO_COLOR`: whether `arkline` writes escape codes at all.
//!
//! `never`, or `NO_COLOR` set to anything but the empty string (without an
//! explicit `--color always`), means no escape codes of any kind: no colours and
//! no live spinners (which redraw with cursor movements); `run` then prints plain
//! lines even on a terminal. `auto` colours a stream only when it is a terminal
//! and `TERM` is not `dumb`. `always` colours even when writing to a pipe.

use std::io::IsTerminal as _;

/// `--color` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour (and live progress) only on a terminal, and not when `NO_COLOR` is set.
    #[default]
    Auto,
    /// Always colour, even when `NO_COLOR` is set or the output is a pipe.
    Always,
    /// No escape codes at all.
    Never,
}

/// What the environment says about colour, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ColorEnv {
    /// `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
    pub no_color: bool,
    /// `TERM=dumb`: a terminal that cannot interpret escape codes.
    pub dumb_term: bool,
}

impl ColorEnv {
    /// The process environment.
    pub fn from_process() -> ColorEnv {
        ColorEnv {
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            dumb_term: std::env::var_os("TERM").is_some_and(|t| t == "dumb"),
        }
    }
}

impl ColorChoice {
    /// Whether a stream that is (or is not) a terminal gets escape codes.
    pub fn resolve(self, is_terminal: bool, env: ColorEnv) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => is_terminal && !env.no_color && !env.dumb_term,
        }
    }

    /// Whether stderr gets escape codes.
    pub fn stderr(self) -> bool {
        self.resolve(std::io::stderr().is_terminal(), ColorEnv::from_process())
    }

    /// Whether stdout gets escape codes.
    pub fn stdout(self) -> bool {
        self.resolve(std::io::stdout().is_terminal(), ColorEnv::from_process())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_and_never_turn_escape_codes_off_and_always_wins() {
        let plain = ColorEnv::default();
        let no_color = ColorEnv {
            no_color: true,
            ..ColorEnv::default()
        };
        let dumb = ColorEnv {
            dumb_term: true,
            ..ColorEnv::default()
        };
        assert!(ColorChoice::Auto.resolve(true, plain));
        assert!(!ColorChoice::Auto.resolve(false, plain));
        assert!(!ColorChoice::Auto.resolve(true, no_color));
        assert!(!ColorChoice::Auto.resolve(true, dumb));
        assert!(ColorChoice::Always.resolve(false, no_color));
        assert!(!ColorChoice::Never.resolve(true, plain));
    }
}
