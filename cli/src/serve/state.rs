//! What every handler of `arkline serve` gets.

use arkline::Container;

/// Shared state of the server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The container every engine lives in.
    pub container: Container,
}

impl AppState {
    /// State over `container`.
    pub fn new(container: Container) -> Self {
        Self { container }
    }
}
