//! The control plane on `[instance] control`: the JSON API (described by
//! the OpenAPI document it serves, built from the same route table), the
//! embedded web UI, `/metrics`, and the one client of that API (the `moat`
//! CLI's and the test harness's).

mod api;
mod auth;
mod client;
mod metrics;
mod server;
mod throttle;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use api::LogQuery;
pub use client::{ClientError, ControlClient, Credentials, RawResponse};

use crate::clock;
use crate::daemon::{Cause, Daemon, DaemonError};
use crate::store::{Access, files};
use auth::Auth;

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    auth: Arc<Auth>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Moat control API", description = "Status, stats, query log, policy, tuning, pause, fleet."),
    components(schemas(ApiErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::SESSION_COOKIE))),
        );
    }
}

/// Binds the control endpoint's address.
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, DaemonError> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the control endpoint on `listener` until `stop` ends, and
/// records its address in the data directory. The task ends once the
/// connections open at `stop` have finished.
pub(crate) fn serve(
    daemon: Arc<Daemon>,
    listener: std::net::TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    let auth = Arc::new(Auth::load(daemon.data().clone())?);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    daemon.data().write(
        files::CONTROL_ADDR,
        addr.to_string().as_bytes(),
        Access::Public,
    )?;
    if !auth.password_set() {
        tracing::info!(
            "no admin password yet: set it in the web UI at http://{addr}/ from this machine, or with the token in {}",
            daemon.data().path(files::CONTROL_TOKEN).display()
        );
    }
    let app = router(AppState { daemon, auth });
    let task = tokio::spawn(server::serve(listener, app, stop));
    tracing::info!(%addr, "control endpoint listening");
    Ok(task)
}

/// The largest request body the login routes read.
const OPEN_BODY_LIMIT: usize = 8 * 1024;
/// The largest request body an authenticated request may send (a policy).
const PROTECTED_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// How long a login route may take, body and hash queue included.
const OPEN_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Every route: the protected API and `/metrics` behind the auth check,
/// login, the OpenAPI document and the UI in front of it.
fn router(state: AppState) -> Router {
    let (protected, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api::routes())
        .split_for_parts();
    let (open, open_doc) = OpenApiRouter::new()
        .merge(api::auth_routes())
        .split_for_parts();
    openapi.merge(open_doc);
    let openapi = Arc::new(openapi);
    let protected = protected
        .route("/metrics", get(api::metrics))
        .layer(DefaultBodyLimit::max(PROTECTED_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), require_auth));
    let open = open
        .layer(DefaultBodyLimit::max(OPEN_BODY_LIMIT))
        .layer(middleware::from_fn(within_deadline));
    Router::new()
        .merge(protected)
        .merge(open)
        .merge(ui::routes())
        .route(
            "/api/openapi.json",
            get(move || {
                let openapi = Arc::clone(&openapi);
                async move { Json(openapi.as_ref().clone()) }
            }),
        )
        .with_state(state)
}

async fn require_auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.auth.admits(request.headers(), clock::unix_now_ms()) {
        next.run(request).await
    } else {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "log in, or send the bearer token from the data directory".into(),
        )
        .into_response()
    }
}

async fn within_deadline(request: Request, next: Next) -> Response {
    match tokio::time::timeout(OPEN_ROUTE_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(
            StatusCode::REQUEST_TIMEOUT,
            "the request took too long".into(),
        )
        .into_response(),
    }
}

/// Whether a request comes from this machine.
fn from_loopback(peer: &ConnectInfo<SocketAddr>) -> bool {
    peer.0.ip().is_loopback()
}

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ApiErrorBody {
    /// What went wrong, for people.
    error: String,
}

/// An error answered as JSON `{"error": ...}` with a status code.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(ApiErrorBody { error: self.1 })).into_response();
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        response
    }
}

impl From<DaemonError> for ApiError {
    fn from(err: DaemonError) -> Self {
        let status = match err.cause() {
            Cause::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Cause::WrongRole => StatusCode::CONFLICT,
            Cause::Refused => StatusCode::FORBIDDEN,
            Cause::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, err.to_string())
    }
}

impl From<auth::AuthError> for ApiError {
    fn from(err: auth::AuthError) -> Self {
        use auth::AuthError;
        let status = match err {
            AuthError::Throttled(_) | AuthError::Busy => StatusCode::TOO_MANY_REQUESTS,
            AuthError::WrongPassword | AuthError::NoPassword => StatusCode::UNAUTHORIZED,
            AuthError::AlreadySet => StatusCode::CONFLICT,
            AuthError::SetupNotAllowed => StatusCode::FORBIDDEN,
            AuthError::TooShort => StatusCode::UNPROCESSABLE_ENTITY,
            AuthError::Store(_) | AuthError::Hash(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, err.to_string())
    }
}
