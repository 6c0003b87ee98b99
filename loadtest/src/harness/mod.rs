//! The load-test harness behind `chorus-loadtest`, usable as a library (the smoke
//! test in the server's test suite drives it): scenarios and presets, tokens (minted
//! or by phone login), the run itself, the server's `/metrics`, and the report.
//!
//! It acts only over the wire (HTTP, WebSocket, WebRTC) like an app, never through the
//! server's crates.

pub mod auth;
pub mod http;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod scenario;

pub use auth::TokenSource;
pub use report::{RunReport, StepReport, render_table};
pub use runner::{NoProgress, Progress, ScenarioReport, Target, run_scenario};
pub use scenario::{Ramp, Scenario, Turns};

/// What stops a run.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Bad flags or target (refused before anything is sent).
    #[error("configuration: {0}")]
    Config(String),
    /// An HTTP call to the control plane failed.
    #[error("http: {0}")]
    Http(String),
    /// Rooms or speakers could not be set up, so nothing can be measured.
    #[error("setup: {0}")]
    Setup(String),
}
