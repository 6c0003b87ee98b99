//! Liveness (`/api/health`, Chillout's body) and readiness (`/api/ready`, touches the database).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::dto::rfc3339;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// Always `ok` when the process answers.
    pub status: String,
    pub message: String,
    /// Server time, RFC 3339.
    pub timestamp: String,
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/api/health", tag = "health",
    responses((status = 200, body = HealthResponse)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
        message: "Chorus server is running".into(),
        timestamp: rfc3339(state.now()),
    })
}

/// Readiness: the database answers a round trip.
#[utoipa::path(get, path = "/api/ready", tag = "health",
    responses(
        (status = 200, body = HealthResponse),
        (status = 503, body = ErrorBody, description = "database unreachable"),
    ))]
pub async fn ready(State(state): State<AppState>) -> ApiResult<Json<HealthResponse>> {
    // A probe must answer quickly even when the database hangs.
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            return Err(ApiError::Unavailable);
        }
        Err(_) => {
            tracing::warn!("readiness check timed out");
            return Err(ApiError::Unavailable);
        }
    }
    Ok(Json(HealthResponse {
        status: "ready".into(),
        message: "Database reachable".into(),
        timestamp: rfc3339(state.now()),
    }))
}
