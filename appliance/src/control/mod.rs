//! The control plane on `[instance] control` (plain HTTP) and, when set,
//! `https` (the same over TLS, `tls.rs`) with `http_redirect` (plain HTTP
//! answering only redirects): the JSON API (described by the OpenAPI
//! document it serves, built from the same route table), the embedded web
//! UI, `/metrics`, and the one client of that API (the `moat` CLI's and the
//! test harness's). Every listener checks `Host`, and browsers' changes
//! their `Origin` (`origin.rs`).

mod api;
mod auth;
mod client;
mod metrics;
mod origin;
mod server;
mod throttle;
mod tls;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use api::LogQuery;
pub(crate) use auth::{set_password_offline, setup_code};
pub use client::{ClientError, ControlClient, Credentials, RawResponse};
pub use tls::HttpsError;
pub(crate) use tls::HttpsIdentity;

use crate::clock;
use crate::config::Instance;
use crate::daemon::{Cause, Daemon, DaemonError};
use crate::store::{Access, DataDir, files};
use auth::Auth;
use server::Transport;

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    auth: Arc<Auth>,
}

/// The HTTPS listener, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HttpsView {
    /// Where it listens.
    #[schema(value_type = String)]
    pub addr: SocketAddr,
    /// SHA-256 of its certificate, hex: what a browser should show.
    #[schema(value_type = String)]
    pub fingerprint: crate::sync::identity::Fingerprint,
    /// The plain HTTP listener that redirects to it, if any.
    #[schema(value_type = Option<String>)]
    pub http_redirect: Option<SocketAddr>,
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

/// The control plane's listeners, bound and not yet served.
#[derive(Debug)]
pub(crate) struct Endpoints {
    control: std::net::TcpListener,
    https: Option<(std::net::TcpListener, HttpsIdentity)>,
    redirect: Option<std::net::TcpListener>,
}

/// Binds the control plane's addresses, and loads (or makes) the HTTPS
/// certificate when `https` is set.
pub(crate) fn bind(instance: &Instance, data: &DataDir) -> Result<Endpoints, DaemonError> {
    let https = match instance.https {
        Some(addr) => Some((bind_tcp(addr)?, HttpsIdentity::load(instance, data)?)),
        None => None,
    };
    Ok(Endpoints {
        control: bind_tcp(instance.control)?,
        https,
        redirect: instance.http_redirect.map(bind_tcp).transpose()?,
    })
}

fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, DaemonError> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Endpoints {
    /// The address the plain control endpoint bound.
    pub(crate) fn control_addr(&self) -> std::io::Result<SocketAddr> {
        self.control.local_addr()
    }

    /// The HTTPS listener, if any, as status shows it.
    pub(crate) fn https_view(&self) -> std::io::Result<Option<HttpsView>> {
        let Some((listener, identity)) = &self.https else {
            return Ok(None);
        };
        Ok(Some(HttpsView {
            addr: listener.local_addr()?,
            fingerprint: identity.fingerprint,
            http_redirect: self
                .redirect
                .as_ref()
                .map(std::net::TcpListener::local_addr)
                .transpose()?,
        }))
    }
}

/// Serves the control plane's listeners until `stop` ends, and records
/// the plain endpoint's address in the data directory. The task ends once
/// the connections open at `stop` have finished.
pub(crate) fn serve(
    daemon: Arc<Daemon>,
    endpoints: Endpoints,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    let auth = Arc::new(Auth::load(daemon.data().clone())?);
    let https = endpoints.https_view()?;
    let addr = endpoints.control_addr()?;
    daemon.data().write(
        files::CONTROL_ADDR,
        addr.to_string().as_bytes(),
        Access::Public,
    )?;
    let names = Arc::new(origin::Names::of(daemon.config().instance.name.as_ref()));
    let app = router(AppState { daemon, auth }).layer(middleware::from_fn_with_state(
        Arc::clone(&names),
        check_host,
    ));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut closed = closed.clone();
        async move {
            let _ = closed.wait_for(|closed| *closed).await;
        }
    };
    let mut servers = tokio::task::JoinSet::new();
    let listener = TcpListener::from_std(endpoints.control)?;
    servers.spawn(server::serve(listener, None, app.clone(), until_stopped()));
    tracing::info!(%addr, "control endpoint listening");
    if let (Some((listener, identity)), Some(view)) = (endpoints.https, &https) {
        let acceptor = TlsAcceptor::from(identity.config);
        let listener = TcpListener::from_std(listener)?;
        servers.spawn(server::serve(
            listener,
            Some(acceptor),
            app,
            until_stopped(),
        ));
        tracing::info!(
            addr = %view.addr,
            fingerprint = %view.fingerprint,
            "HTTPS control endpoint listening; its certificate's SHA-256 fingerprint is {}",
            view.fingerprint
        );
    }
    if let (Some(listener), Some(view)) = (endpoints.redirect, &https) {
        let redirect = Router::new()
            .fallback(redirect_to_https)
            .layer(Extension(RedirectTo(view.addr.port())))
            .layer(middleware::from_fn_with_state(names, check_host));
        let listener = TcpListener::from_std(listener)?;
        servers.spawn(server::serve(listener, None, redirect, until_stopped()));
        tracing::info!(addr = ?view.http_redirect, "plain HTTP redirects to HTTPS");
    }
    Ok(tokio::spawn(async move {
        stop.await;
        let _ = closing.send(true);
        servers.join_all().await;
    }))
}

/// The HTTPS port redirects point to.
#[derive(Debug, Clone, Copy)]
struct RedirectTo(u16);

/// Answers every request on the plain redirect port with a redirect to
/// the same path over HTTPS (308 for changes, so nothing is done here).
async fn redirect_to_https(
    Extension(RedirectTo(port)): Extension<RedirectTo>,
    request: Request,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let bare = host
        .rsplit_once(':')
        .filter(|(_, port)| !port.contains(']'))
        .map_or(host, |(bare, _)| bare);
    let authority = if port == 443 {
        bare.to_owned()
    } else {
        format!("{bare}:{port}")
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", axum::http::uri::PathAndQuery::as_str);
    let status = if origin::changes_state(request.method()) {
        StatusCode::PERMANENT_REDIRECT
    } else {
        StatusCode::MOVED_PERMANENTLY
    };
    match format!("https://{authority}{path}").parse::<Uri>() {
        Ok(location) => (
            status,
            [(header::LOCATION, location.to_string())],
            "this appliance is served over HTTPS\n",
        )
            .into_response(),
        Err(_) => ApiError(StatusCode::BAD_REQUEST, "bad Host".into()).into_response(),
    }
}

/// Refuses a request whose `Host` is not one of this appliance's names or
/// an IP literal (DNS rebinding).
async fn check_host(
    State(names): State<Arc<origin::Names>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    match host {
        Some(host) if names.admit(host) => next.run(request).await,
        _ => ApiError(
            StatusCode::MISDIRECTED_REQUEST,
            "the Host header does not name this appliance: use its name, <name>.local or its address"
                .into(),
        )
        .into_response(),
    }
}

/// Refuses a browser's change whose `Origin` (or `Referer`) is another
/// site's; requests with the bearer token are not asked.
async fn check_origin(
    State(state): State<AppState>,
    Extension(transport): Extension<Transport>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if origin::changes_state(request.method()) && !state.auth.has_token(headers) {
        let with_session = auth::carries_session(headers);
        if let Some(reason) = origin::cross_origin(headers, transport, with_session) {
            return ApiError(StatusCode::FORBIDDEN, format!("refused: {reason}")).into_response();
        }
    }
    next.run(request).await
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
        .layer(middleware::from_fn_with_state(state.clone(), check_origin))
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
            AuthError::WrongSetupCode => StatusCode::FORBIDDEN,
            AuthError::TooShort => StatusCode::UNPROCESSABLE_ENTITY,
            AuthError::Store(_) | AuthError::Hash(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, err.to_string())
    }
}
