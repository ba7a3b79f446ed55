//! Fixtures shared by the CLI tests: `.arkc` files built from real bizes, and a
//! real `arkline serve` child process.

pub mod arkc;
pub mod server;
pub mod webdriver;
