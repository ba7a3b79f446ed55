//! Structured, levelled logging into the step's log (always granted).
//!
//! Use the macros: [`info!`](crate::info), [`warn!`](crate::warn),
//! [`error!`](crate::error), [`debug!`](crate::debug), [`trace!`](crate::trace).
//! Standard output and standard error of the guest also go to the step log.

use crate::bindings::arkline::step::log as wit;

/// Severity of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the step survived.
    Warn,
    /// A failure.
    Error,
}

/// Appends one record with structured `fields` to the step's log.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    let fields = crate::context::key_values(fields.iter().copied());
    wit::log(level, message, &fields);
}

/// Logs at a given level with `format!` arguments. The level macros call this one.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log::log($level, &::std::format!($($arg)+), &[])
    };
}

/// Logs at info level: `info!("built {} in {}s", name, secs)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) };
}

/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) };
}

/// Logs at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Error, $($arg)+) };
}

/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arg)+) };
}

/// Logs at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Trace, $($arg)+) };
}
