//! A client of a running moat's control API over real HTTP, with either
//! the bearer token, a browser-style session cookie, or nothing.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::MoatProcess;

/// How requests prove who they are.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// No credentials at all.
    None,
    /// `Authorization: Bearer` with the token from the data directory.
    Token(String),
    /// `Cookie: moat_session=…`, as a browser sends it.
    Session(String),
}

/// One answer: status, headers and the body as JSON (or `Null`).
#[derive(Debug)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The JSON body, `Null` when there is none.
    pub body: Value,
    /// The body as text.
    pub text: String,
}

impl ApiResponse {
    /// The session id in `Set-Cookie`, if any.
    pub fn session(&self) -> Option<String> {
        self.set_cookie()?
            .split(';')
            .next()?
            .strip_prefix("moat_session=")
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
    }

    /// The `Set-Cookie` header.
    pub fn set_cookie(&self) -> Option<&str> {
        self.headers.get("set-cookie")?.to_str().ok()
    }
}

/// A control API client for one moat.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// `http://addr`.
    pub base: String,
    /// What every request carries.
    pub credentials: Credentials,
}

impl ApiClient {
    /// A client for `moat` with `credentials`.
    pub fn new(moat: &MoatProcess, credentials: Credentials) -> Self {
        let addr = std::fs::read_to_string(moat.dir.0.join("data/control.addr"))
            .expect("control.addr of a running moat");
        Self {
            http: plain_http_client(),
            base: format!("http://{}", addr.trim()),
            credentials,
        }
    }

    /// A client for `moat` with its bearer token.
    pub fn with_token(moat: &MoatProcess) -> Self {
        let token = std::fs::read_to_string(moat.dir.0.join("data/control.token"))
            .expect("control.token of a running moat");
        Self::new(moat, Credentials::Token(token.trim().to_owned()))
    }

    /// The same server with other credentials.
    pub fn with_credentials(&self, credentials: Credentials) -> Self {
        Self {
            credentials,
            ..self.clone()
        }
    }

    /// Sends `method path` with an optional JSON body.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> ApiResponse {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        request = match &self.credentials {
            Credentials::None => request,
            Credentials::Token(token) => request.bearer_auth(token),
            Credentials::Session(id) => request.header("cookie", format!("moat_session={id}")),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("control API reachable");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        ApiResponse {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> ApiResponse {
        self.send(Method::GET, path, None).await
    }

    /// POST `body` to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> ApiResponse {
        self.send(Method::POST, path, Some(body)).await
    }

    /// PUT `body` to `path`.
    pub async fn put(&self, path: &str, body: &Value) -> ApiResponse {
        self.send(Method::PUT, path, Some(body)).await
    }
}

/// A reqwest client for plain HTTP on loopback; reqwest still wants a TLS
/// backend, so it gets ring with no roots.
fn plain_http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("build an HTTP client")
}
