//! (to be built)

use axum::Router;

use super::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
}
