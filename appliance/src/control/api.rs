//! The JSON API's handlers. Each carries its OpenAPI description, and the
//! route table is built from those descriptions, so the document and the
//! routes cannot drift apart.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequest, OptionalFromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::server::Transport;
use super::{ApiError, AppState, auth, metrics};
use crate::clock;
use crate::config::{Policy, Tuning};
use crate::daemon::{PolicyView, Status};
use crate::fleet::ReplicaView;
use crate::policy::PauseState;
use crate::stats::{LogFilter, LogPage, MinuteCounts, Outcome, StatsSnapshot};

/// The routes that need a session or the token.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(stats))
        .routes(routes!(query_log))
        .routes(routes!(get_policy, put_policy))
        .routes(routes!(get_tuning, put_tuning))
        .routes(routes!(reload))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(pairing_code))
        .routes(routes!(join))
        .routes(routes!(replicas))
        .routes(routes!(revoke))
        .routes(routes!(support_bundle))
        .routes(routes!(reboot))
        .routes(routes!(factory_reset))
}

/// The routes that let a person in.
pub(super) fn auth_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(auth_state))
        .routes(routes!(setup))
        .routes(routes!(login))
        .routes(routes!(logout))
}

/// A JSON body whose rejection is answered like every other error:
/// `{"error": ...}` naming the key that is wrong.
struct JsonBody<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        <Json<T> as FromRequest<S>>::from_request(request, state)
            .await
            .map(|Json(value)| Self(value))
            .map_err(|rejection| ApiError(rejection.status(), rejection.body_text()))
    }
}

impl<T: serde::de::DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, ApiError> {
        <Json<T> as OptionalFromRequest<S>>::from_request(request, state)
            .await
            .map(|body| body.map(|Json(value)| Self(value)))
            .map_err(|rejection| ApiError(rejection.status(), rejection.body_text()))
    }
}

/// Runs blocking daemon work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
}

/// Whether the caller is logged in, and whether a password exists yet.
#[derive(Serialize, ToSchema)]
struct AuthState {
    password_set: bool,
    authenticated: bool,
}

#[utoipa::path(get, path = "/api/v1/auth", tag = "auth",
    responses((status = 200, body = AuthState)))]
async fn auth_state(State(state): State<AppState>, headers: HeaderMap) -> Json<AuthState> {
    Json(AuthState {
        password_set: state.auth.password_set(),
        authenticated: state.auth.admits(&headers, clock::unix_now_ms()),
    })
}

/// A password, to log in with.
#[derive(Deserialize, ToSchema)]
struct PasswordBody {
    password: String,
}

/// The first admin password and what allows setting it.
#[derive(Deserialize, ToSchema)]
struct SetupBody {
    /// The new password, at least 8 characters.
    password: String,
    /// The setup code from the log (on the image: the console and the boot
    /// partition's `moat-setup-code.txt`); not needed with the bearer token.
    code: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/auth/setup", tag = "auth",
    description = "Sets the first admin password; needs the setup code, or the bearer token.",
    request_body = SetupBody,
    responses((status = 204, description = "set; the session cookie is in Set-Cookie"),
        (status = 403, description = "wrong or missing setup code", body = super::ApiErrorBody),
        (status = 409, body = super::ApiErrorBody),
        (status = 429, description = "too many wrong codes; see Retry-After", body = super::ApiErrorBody)))]
async fn setup(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    Extension(transport): Extension<Transport>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SetupBody>,
) -> Result<Response, Response> {
    let proof = if state.auth.has_token(&headers) {
        None
    } else {
        Some(body.code.as_deref().unwrap_or_default())
    };
    let session = state
        .auth
        .set_first_password(peer.0.ip(), proof, body.password, clock::unix_now_ms())
        .await
        .map_err(refusal)?;
    Ok(with_cookie(&auth::session_cookie(
        &session,
        transport == Transport::Tls,
    )))
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = PasswordBody,
    responses((status = 204, description = "logged in; the session cookie is in Set-Cookie"),
        (status = 401, body = super::ApiErrorBody),
        (status = 429, description = "too many failed logins, or too many at once; see Retry-After", body = super::ApiErrorBody)))]
async fn login(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    Extension(transport): Extension<Transport>,
    JsonBody(body): JsonBody<PasswordBody>,
) -> Result<Response, Response> {
    let session = state
        .auth
        .login(peer.0.ip(), body.password, clock::unix_now_ms())
        .await
        .map_err(refusal)?;
    Ok(with_cookie(&auth::session_cookie(
        &session,
        transport == Transport::Tls,
    )))
}

/// A refused login or setup, with `Retry-After` when waiting helps.
fn refusal(err: auth::AuthError) -> Response {
    let retry = match &err {
        auth::AuthError::Throttled(wait) => Some(wait.as_secs().max(1)),
        auth::AuthError::Busy => Some(1),
        _ => None,
    };
    let mut response = ApiError::from(err).into_response();
    if let Some(secs) = retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "the session is closed")))]
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    state.auth.logout(&headers);
    with_cookie(&auth::expired_cookie())
}

fn with_cookie(cookie: &str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[utoipa::path(get, path = "/api/v1/status", tag = "status",
    responses((status = 200, body = Status)), security(("bearer" = []), ("session" = [])))]
async fn status(State(state): State<AppState>) -> Json<Status> {
    Json(state.daemon.status())
}

/// How many entries each top list holds.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TopParam {
    /// Entries per top list (default 10, at most 1000).
    top: Option<usize>,
}

/// Counters, top lists and the last day minute by minute.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsView {
    /// The counters and top lists.
    #[serde(flatten)]
    pub snapshot: StatsSnapshot,
    /// Queries per minute over the last day, oldest first.
    pub series: Vec<MinuteCounts>,
}

#[utoipa::path(get, path = "/api/v1/stats", tag = "status", params(TopParam),
    responses((status = 200, body = StatsView)), security(("bearer" = []), ("session" = [])))]
async fn stats(State(state): State<AppState>, Query(param): Query<TopParam>) -> Json<StatsView> {
    let stats = state.daemon.handler().stats();
    Json(StatsView {
        snapshot: stats.snapshot(param.top.unwrap_or(10).min(1000)),
        series: stats.series(),
    })
}

/// A query log search.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Entries per page (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Matching entries to skip, newest first.
    pub offset: Option<usize>,
    /// Part of the name.
    pub name: Option<String>,
    /// The client's address.
    pub client: Option<String>,
    /// Query type, by name (`AAAA`) or number.
    pub qtype: Option<String>,
    /// How it was answered: cached, forwarded, stale, blocked, rejected, failed, local, shed, limited.
    pub verdict: Option<String>,
    /// Answered at or after, Unix milliseconds.
    pub since_ms: Option<u64>,
    /// Answered before, Unix milliseconds.
    pub until_ms: Option<u64>,
}

impl LogQuery {
    fn filter(&self) -> Result<LogFilter, ApiError> {
        let bad = |what: &str, value: &str| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("{what} `{value}` is not valid"),
            )
        };
        let present = |value: &Option<String>| value.clone().filter(|value| !value.is_empty());
        Ok(LogFilter {
            name: present(&self.name).map(|name| name.to_ascii_lowercase()),
            client: present(&self.client)
                .map(|text| IpAddr::from_str(&text).map_err(|_| bad("client", &text)))
                .transpose()?,
            qtype: present(&self.qtype)
                .map(|text| {
                    text.parse::<u16>()
                        .ok()
                        .or_else(|| {
                            hickory_proto::rr::RecordType::from_str(&text.to_ascii_uppercase())
                                .ok()
                                .map(u16::from)
                        })
                        .ok_or_else(|| bad("qtype", &text))
                })
                .transpose()?,
            outcome: present(&self.verdict)
                .map(|text| {
                    serde_json::from_value::<Outcome>(serde_json::Value::String(text.clone()))
                        .map_err(|_| bad("verdict", &text))
                })
                .transpose()?,
            since_ms: self.since_ms,
            until_ms: self.until_ms,
        })
    }
}

/// One page of the query log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPageView {
    /// The entries and whether more match.
    #[serde(flatten)]
    pub page: LogPage,
    /// Matching entries skipped.
    pub offset: usize,
    /// Entries per page.
    pub limit: usize,
}

#[utoipa::path(get, path = "/api/v1/querylog", tag = "status", params(LogQuery),
    responses((status = 200, body = LogPageView), (status = 400, body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn query_log(
    State(state): State<AppState>,
    Query(query): Query<LogQuery>,
) -> Result<Json<LogPageView>, ApiError> {
    let filter = query.filter()?;
    let (offset, limit) = (
        query.offset.unwrap_or(0),
        query.limit.unwrap_or(100).min(1000),
    );
    let page = state
        .daemon
        .handler()
        .query_log()
        .search(&filter, offset, limit);
    Ok(Json(LogPageView {
        page,
        offset,
        limit,
    }))
}

#[utoipa::path(get, path = "/api/v1/policy", tag = "settings",
    responses((status = 200, body = PolicyView)), security(("bearer" = []), ("session" = [])))]
async fn get_policy(State(state): State<AppState>) -> Result<Json<PolicyView>, ApiError> {
    let daemon = Arc::clone(&state.daemon);
    Ok(Json(blocking(move || Ok(daemon.policy())).await?))
}

/// The configuration generation a change produced.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Applied {
    /// Times the configuration was applied since start, this one included.
    pub config_generation: u64,
}

#[utoipa::path(put, path = "/api/v1/policy", tag = "settings",
    description = "Replaces the whole policy (the primary only) and applies it to the fleet.",
    request_body(content = Object, description = "The `policy` object of GET /api/v1/policy"),
    responses((status = 200, body = Applied),
        (status = 409, description = "this appliance is a replica", body = super::ApiErrorBody),
        (status = 422, description = "invalid; the message names the key", body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn put_policy(
    State(state): State<AppState>,
    JsonBody(policy): JsonBody<Policy>,
) -> Result<Json<Applied>, ApiError> {
    let config_generation = state.daemon.set_policy(policy).await?;
    Ok(Json(Applied { config_generation }))
}

/// This appliance's tuning.
#[derive(Serialize, Deserialize, ToSchema)]
pub(super) struct TuningView {
    #[schema(value_type = Object)]
    pub(super) tuning: Tuning,
}

#[utoipa::path(get, path = "/api/v1/tuning", tag = "settings",
    responses((status = 200, body = TuningView)), security(("bearer" = []), ("session" = [])))]
async fn get_tuning(State(state): State<AppState>) -> Json<TuningView> {
    Json(TuningView {
        tuning: state.daemon.tuning(),
    })
}

#[utoipa::path(put, path = "/api/v1/tuning", tag = "settings",
    description = "Replaces this appliance's tuning and applies it; kept across restarts.",
    request_body(content = Object, description = "The `tuning` object of GET /api/v1/tuning"),
    responses((status = 200, body = Applied),
        (status = 422, description = "invalid; the message names the key", body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn put_tuning(
    State(state): State<AppState>,
    JsonBody(tuning): JsonBody<Tuning>,
) -> Result<Json<Applied>, ApiError> {
    let config_generation = state.daemon.set_tuning(tuning).await?;
    Ok(Json(Applied { config_generation }))
}

#[utoipa::path(post, path = "/api/v1/reload", tag = "settings",
    description = "Reads the configuration file again and applies it.",
    responses((status = 200, body = Applied), (status = 422, body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn reload(State(state): State<AppState>) -> Result<Json<Applied>, ApiError> {
    let config_generation = state.daemon.reload().await?;
    Ok(Json(Applied { config_generation }))
}

/// What a user sends along when asking for help: no keys, tokens,
/// passwords or codes, only what the appliance says about itself.
#[derive(Serialize, ToSchema)]
struct SupportBundle {
    /// When it was made, Unix milliseconds.
    generated_unix_ms: u64,
    /// The status, every error in it.
    status: Status,
    /// The last lines logged, oldest first.
    log: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/support-bundle", tag = "appliance",
    description = "Status, versions and the recent log lines, as a file to download; no secrets.",
    responses((status = 200, body = SupportBundle)),
    security(("bearer" = []), ("session" = [])))]
async fn support_bundle(State(state): State<AppState>) -> impl IntoResponse {
    let status = state.daemon.status();
    let generated_unix_ms = clock::unix_now_ms();
    let file = format!(
        "attachment; filename=\"moat-support-{}-{generated_unix_ms}.json\"",
        status.name
    );
    let bundle = SupportBundle {
        generated_unix_ms,
        status,
        log: crate::recent_log::lines(),
    };
    let disposition =
        HeaderValue::from_str(&file).unwrap_or(HeaderValue::from_static("attachment"));
    ([(header::CONTENT_DISPOSITION, disposition)], Json(bundle))
}

#[utoipa::path(post, path = "/api/v1/reboot", tag = "appliance",
    description = "Reboots the appliance a second from now (on the image only).",
    responses((status = 202), (status = 409, body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn reboot(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state.daemon.reboot()?;
    Ok(StatusCode::ACCEPTED)
}

/// What a factory reset must be sent with, so no stray request erases.
const FACTORY_RESET_CONFIRMATION: &str = "erase everything";

/// The confirmation of a factory reset.
#[derive(Deserialize, ToSchema)]
struct FactoryResetBody {
    /// Exactly `"erase everything"`.
    confirm: String,
}

#[utoipa::path(post, path = "/api/v1/factory-reset", tag = "appliance",
    description = "Erases every setting, key, pairing and log and reboots as a freshly flashed appliance (on the image only).",
    request_body = FactoryResetBody,
    responses((status = 202), (status = 409, body = super::ApiErrorBody),
        (status = 422, body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn factory_reset(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<FactoryResetBody>,
) -> Result<StatusCode, ApiError> {
    if body.confirm != FACTORY_RESET_CONFIRMATION {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("confirm: must be \"{FACTORY_RESET_CONFIRMATION}\""),
        ));
    }
    state.daemon.factory_reset()?;
    Ok(StatusCode::ACCEPTED)
}

/// How long to pause blocking.
#[derive(Serialize, Deserialize, Default, ToSchema)]
pub(super) struct PauseBody {
    /// `"30s"`, `"5m"`, `"1h"`, at most 30 days; absent pauses until resumed.
    pub(super) duration: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/pause", tag = "blocking",
    request_body(content = PauseBody, description = "Absent or null duration: until resumed"),
    responses((status = 200, body = PauseState), (status = 400, body = super::ApiErrorBody),
        (status = 422, description = "shorter than 1s or longer than 30 days", body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn pause(
    State(state): State<AppState>,
    body: Option<JsonBody<PauseBody>>,
) -> Result<Json<PauseState>, ApiError> {
    let body = body.map(|JsonBody(body)| body).unwrap_or_default();
    let duration = body
        .duration
        .as_deref()
        .map(|text| parse_duration(text, "a pause", MAX_PAUSE))
        .transpose()?;
    Ok(Json(state.daemon.pause(duration).await?))
}

#[utoipa::path(post, path = "/api/v1/resume", tag = "blocking",
    responses((status = 200, body = PauseState)), security(("bearer" = []), ("session" = [])))]
async fn resume(State(state): State<AppState>) -> Result<Json<PauseState>, ApiError> {
    Ok(Json(state.daemon.resume().await?))
}

/// How long a pairing code stays valid.
#[derive(Serialize, Deserialize, Default, ToSchema)]
pub(super) struct CodeBody {
    /// `"10m"` unless given; at most `"24h"`.
    pub(super) valid: Option<String>,
}

/// A one-time pairing code.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PairingCode {
    /// The code a replica pairs with, once.
    pub code: String,
    /// How long it stays valid, seconds.
    pub valid_secs: u64,
    /// When it expires, Unix seconds.
    pub expires_unix: u64,
}

#[utoipa::path(post, path = "/api/v1/pairing-code", tag = "fleet",
    description = "Issues a one-time code a replica pairs with (the primary only).",
    request_body(content = CodeBody),
    responses((status = 200, body = PairingCode), (status = 409, body = super::ApiErrorBody),
        (status = 400, body = super::ApiErrorBody),
        (status = 422, description = "shorter than 1s or longer than 24 hours", body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn pairing_code(
    State(state): State<AppState>,
    body: Option<JsonBody<CodeBody>>,
) -> Result<Json<PairingCode>, ApiError> {
    let body = body.map(|JsonBody(body)| body).unwrap_or_default();
    let valid = body
        .valid
        .as_deref()
        .map(|text| parse_duration(text, "a pairing code", MAX_CODE_VALIDITY))
        .transpose()?;
    let (code, valid) = state.daemon.issue_pairing_code(valid)?;
    Ok(Json(PairingCode {
        code,
        valid_secs: valid.as_secs(),
        expires_unix: clock::unix_now() + valid.as_secs(),
    }))
}

/// The longest a pairing code may stay valid.
const MAX_CODE_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The longest timed pause; a longer one is a pause until resumed.
const MAX_PAUSE: Duration = Duration::from_secs(30 * 86_400);

/// Reads a duration from the API: unparsable is a 400, zero or longer
/// than `max` a 422 naming `what` and its limit.
fn parse_duration(text: &str, what: &str, max: Duration) -> Result<Duration, ApiError> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| ApiError(StatusCode::BAD_REQUEST, format!("duration `{text}`: {err}")))?;
    let refused = |reason: String| ApiError(StatusCode::UNPROCESSABLE_ENTITY, reason);
    if duration < Duration::from_secs(1) {
        return Err(refused(format!("{what} lasts at least 1s, not `{text}`")));
    }
    if duration > max {
        return Err(refused(format!(
            "{what} lasts at most {}, not `{text}`",
            humantime::format_duration(max)
        )));
    }
    Ok(duration)
}

/// Where the primary is and the code it issued.
#[derive(Serialize, Deserialize, ToSchema)]
pub(super) struct JoinBody {
    /// The primary's sync address; when absent, the one primary found on
    /// the LAN by mDNS.
    #[serde(default)]
    pub(super) address: Option<String>,
    pub(super) code: String,
}

#[utoipa::path(post, path = "/api/v1/join", tag = "fleet",
    description = "Pairs this appliance with a primary and makes it a replica.",
    request_body = JoinBody,
    responses((status = 200, description = "the pinned primary", body = Object),
        (status = 403, body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn join(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<JoinBody>,
) -> Result<impl IntoResponse, ApiError> {
    let pin = state
        .daemon
        .join(body.address.as_deref(), &body.code)
        .await?;
    Ok(Json(pin))
}

#[utoipa::path(get, path = "/api/v1/replicas", tag = "fleet",
    description = "The primary's replicas, their status and their last pushed stats.",
    responses((status = 200, body = Vec<ReplicaView>)), security(("bearer" = []), ("session" = [])))]
async fn replicas(State(state): State<AppState>) -> Json<Vec<ReplicaView>> {
    Json(state.daemon.replicas())
}

/// The replica that was revoked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    /// Its name.
    pub revoked: String,
}

#[utoipa::path(post, path = "/api/v1/replicas/{name}/revoke", tag = "fleet",
    params(("name" = String, Path, description = "The replica's name")),
    responses((status = 200, body = Revoked), (status = 404, body = super::ApiErrorBody),
        (status = 409, body = super::ApiErrorBody)),
    security(("bearer" = []), ("session" = [])))]
async fn revoke(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    if state.daemon.revoke(&name)? {
        Ok(Json(Revoked { revoked: name }))
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no replica named `{name}`"),
        ))
    }
}

/// `/metrics` in the Prometheus text format.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let status = state.daemon.status();
    let stats = state.daemon.handler().stats().snapshot(0);
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(
            &status,
            &stats,
            &metrics::Extra {
                logins: state.auth.login_stats(),
                query_log_dropped: state.daemon.handler().query_log().dropped_for_disk(),
                udp_threads: state
                    .daemon
                    .udp_threads()
                    .iter()
                    .map(|thread| {
                        let queries = thread.queries.load(std::sync::atomic::Ordering::Relaxed);
                        (thread.addr.to_string(), thread.index, queries)
                    })
                    .collect(),
            },
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(text: &str, max: Duration) -> (StatusCode, String) {
        let ApiError(status, message) = parse_duration(text, "a pairing code", max).unwrap_err();
        (status, message)
    }

    #[test]
    fn durations_are_capped_and_never_overflow() {
        assert_eq!(
            parse_duration("24h", "a pairing code", MAX_CODE_VALIDITY).unwrap(),
            MAX_CODE_VALIDITY
        );
        for huge in ["300000000000y", "100000y", "25h", "1day 1s"] {
            let (status, message) = refusal(huge, MAX_CODE_VALIDITY);
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{huge}");
            assert!(message.contains("at most 1day"), "{message}");
        }
        assert_eq!(refusal("0s", MAX_PAUSE).0, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            refusal("99999999999999999999999y", MAX_PAUSE).0,
            StatusCode::BAD_REQUEST,
            "beyond u64 seconds humantime itself refuses"
        );
        assert_eq!(refusal("soon", MAX_PAUSE).0, StatusCode::BAD_REQUEST);
        let (status, message) = refusal("31days", MAX_PAUSE);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message.contains("at most 30days"), "{message}");
    }
}
