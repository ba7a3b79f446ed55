//! The WebDriver client, from the test kit (the page-load bench uses it too).

pub use arkline_testkit::webdriver::*;
