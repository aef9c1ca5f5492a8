//! The control endpoint: a small token-protected HTTP API on
//! `[instance] control`, and the client the `moat` CLI uses to reach it.

mod client;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

pub use client::{ClientError, ControlClient};

use crate::daemon::{Daemon, DaemonError, FleetError};
use crate::store::{Access, files};

#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    token: Arc<str>,
}

/// Binds the control endpoint, records its address in the data directory
/// and serves it until the process ends.
pub async fn serve(daemon: Arc<Daemon>) -> Result<SocketAddr, DaemonError> {
    let config = daemon.config();
    let token: Arc<str> = daemon.data().control_token()?.into();
    let listener = tokio::net::TcpListener::bind(config.instance.control).await?;
    let addr = listener.local_addr()?;
    daemon.data().write(
        files::CONTROL_ADDR,
        addr.to_string().as_bytes(),
        Access::Public,
    )?;
    let state = AppState { daemon, token };
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/querylog", get(query_log))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/pairing-code", post(pairing_code))
        .route("/api/v1/join", post(join))
        .route("/api/v1/replicas", get(replicas))
        .route("/api/v1/replicas/{name}/revoke", post(revoke))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .merge(ui::routes())
        .with_state(state);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, api).await {
            tracing::error!(error = %err, "control endpoint stopped");
        }
    });
    tracing::info!(%addr, "control endpoint listening");
    Ok(addr)
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// An error answered as JSON `{"error": ...}` with a status code.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(err: DaemonError) -> Self {
        let status = match err {
            DaemonError::Config(_) | DaemonError::Upstream(_) | DaemonError::UpstreamCa { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            DaemonError::SyncedPolicy { .. } | DaemonError::Fleet(FleetError::Role(_)) => {
                StatusCode::CONFLICT
            }
            DaemonError::Fleet(FleetError::Pairing(_) | FleetError::Code(_)) => {
                StatusCode::FORBIDDEN
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, err.to_string())
    }
}

async fn status(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.daemon.status())
}

#[derive(Deserialize)]
struct TopParam {
    top: Option<usize>,
}

async fn stats(State(state): State<AppState>, Query(param): Query<TopParam>) -> impl IntoResponse {
    Json(
        state
            .daemon
            .handler()
            .stats()
            .snapshot(param.top.unwrap_or(10).min(1000)),
    )
}

#[derive(Deserialize)]
struct LimitParam {
    limit: Option<usize>,
}

async fn query_log(
    State(state): State<AppState>,
    Query(param): Query<LimitParam>,
) -> impl IntoResponse {
    Json(
        state
            .daemon
            .handler()
            .query_log()
            .recent(param.limit.unwrap_or(100).min(10_000)),
    )
}

async fn reload(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let generation = state.daemon.reload()?;
    Ok(Json(serde_json::json!({ "config_generation": generation })))
}

#[derive(Deserialize, Default)]
struct PauseBody {
    /// `"5m"`, `"1h"`; absent pauses until resumed.
    duration: Option<String>,
}

async fn pause(
    State(state): State<AppState>,
    body: Option<Json<PauseBody>>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.map(|Json(body)| body).unwrap_or_default();
    let duration = body.duration.as_deref().map(parse_duration).transpose()?;
    Ok(Json(state.daemon.pause(duration)?))
}

async fn resume(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.daemon.resume()?))
}

#[derive(Deserialize, Default)]
struct CodeBody {
    valid: Option<String>,
}

async fn pairing_code(
    State(state): State<AppState>,
    body: Option<Json<CodeBody>>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.map(|Json(body)| body).unwrap_or_default();
    let valid = body.valid.as_deref().map(parse_duration).transpose()?;
    let (code, valid) = state.daemon.issue_pairing_code(valid)?;
    Ok(Json(
        serde_json::json!({ "code": code, "valid_secs": valid.as_secs() }),
    ))
}

fn parse_duration(text: &str) -> Result<std::time::Duration, ApiError> {
    humantime::parse_duration(text)
        .map_err(|err| ApiError(StatusCode::BAD_REQUEST, format!("duration `{text}`: {err}")))
}

#[derive(Deserialize)]
struct JoinBody {
    address: String,
    code: String,
}

async fn join(
    State(state): State<AppState>,
    Json(body): Json<JoinBody>,
) -> Result<impl IntoResponse, ApiError> {
    let pin = state.daemon.join(&body.address, &body.code).await?;
    Ok(Json(pin))
}

async fn replicas(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.daemon.status().replicas)
}

async fn revoke(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if state.daemon.revoke(&name)? {
        Ok(Json(serde_json::json!({ "revoked": name })))
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no replica named `{name}`"),
        ))
    }
}
