//! Cross-crate integration tests of arkline; the tests are in `tests/tests/`.
