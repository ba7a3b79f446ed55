//! `arkline serve`: the admin HTTP API, webhooks and metrics over one container.
//!
//! Module map (one writer each while this is being built):
//! - `state`: [`AppState`], what every handler gets;
//! - `api`: the `/api/v1` admin API (auth, engines, bizes, pipelines, executions, logs, secrets);
//! - `hooks`: `POST /hooks/<engine>/<pipeline>` (GitHub/GitLab-compatible webhooks);
//! - `metrics`: Prometheus `/metrics`.

use std::process::ExitCode;

use axum::Router;

pub mod hooks;
pub mod metrics;
pub mod state;

pub use state::AppState;

/// Arguments of `arkline serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

impl ServeArgs {
    /// Runs the subcommand.
    pub fn exec(self) -> anyhow::Result<ExitCode> {
        anyhow::bail!("`arkline serve` is not built yet")
    }
}

/// The whole HTTP surface of `arkline serve` over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(hooks::router())
        .merge(metrics::router())
        .with_state(state)
}
