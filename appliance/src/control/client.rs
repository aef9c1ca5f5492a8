//! The one client of the control API: the `moat` CLI and the test harness
//! both talk to a running daemon through it, a local one over plain HTTP on
//! loopback, a remote one over HTTPS pinned by its certificate's
//! fingerprint. Answers arrive as the daemon's own types;
//! [`ControlClient::request`] is there for callers that examine the API
//! itself (status codes, headers, bodies it must refuse).

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::api::{
    Applied, CodeBody, JoinBody, LogPageView, LogQuery, PairingCode, PauseBody, Revoked, StatsView,
    TuningView,
};
use super::auth::SESSION_COOKIE;
use crate::config::{Config, Tuning};
use crate::daemon::{PolicyView, Status};
use crate::fleet::ReplicaView;
use crate::policy::PauseState;
use crate::store::{DataDir, StoreError, files};
use crate::sync::identity::Fingerprint;
use crate::sync::pairing::PrimaryPin;
use crate::sync::tls::{Pins, pinned_https_client};

/// Why a request to the daemon did not give an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The token or address could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No token: the daemon has never run with this data directory.
    #[error("no control token in {}: is moat running with this config?", .0.display())]
    NoToken(PathBuf),
    /// The HTTP client's TLS backend could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Tls(String),
    /// A remote appliance's URL is not `https://HOST[:PORT]`.
    #[error("`{0}` is not an https://HOST[:PORT] URL")]
    BadUrl(String),
    /// A remote appliance showed another certificate than the pinned one.
    #[error(
        "{url} shows a certificate with SHA-256 fingerprint {presented}, not the pinned \
         {pinned}: refusing to talk to it (check the fingerprint on the appliance's console)"
    )]
    WrongCertificate {
        /// The appliance asked.
        url: String,
        /// The fingerprint it showed.
        presented: Fingerprint,
        /// The fingerprint asked for.
        pinned: Fingerprint,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
    /// The daemon did not answer.
    #[error("cannot reach moat at {at}: {reason} (is it running?)")]
    Unreachable {
        /// Where we looked.
        at: String,
        /// The transport error.
        reason: reqwest::Error,
    },
    /// The daemon answered with an error.
    #[error("moat refused: {message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The daemon's reason, or the status when it gave none.
        message: String,
    },
    /// The daemon's answer is not the type this client expects.
    #[error("moat's answer to {path} does not parse: {reason}")]
    Malformed {
        /// The API path asked.
        path: String,
        /// What did not parse.
        reason: serde_json::Error,
    },
}

/// How requests prove who sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// None at all.
    Anonymous,
    /// `Authorization: Bearer`, the token in the daemon's data directory.
    Token(String),
    /// A session cookie, as a browser sends it after logging in.
    Session(String),
}

/// An answer whatever its status, for [`ControlClient::request`].
#[derive(Debug)]
pub struct RawResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub text: String,
}

impl RawResponse {
    /// The body as JSON, `Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The session id a `Set-Cookie` header hands out, if any.
    pub fn session(&self) -> Option<String> {
        self.set_cookie()?
            .split(';')
            .next()?
            .strip_prefix(SESSION_COOKIE)?
            .strip_prefix('=')
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
    }

    /// The `Set-Cookie` header.
    pub fn set_cookie(&self) -> Option<&str> {
        self.headers.get("set-cookie")?.to_str().ok()
    }
}

/// A client of one daemon's control endpoint.
#[derive(Debug, Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    /// `http://ADDR` or `https://HOST:PORT`, no trailing slash.
    base: String,
    credentials: Credentials,
    /// For a pinned HTTPS client: the pin and the fingerprint last shown.
    pinned: Option<(Fingerprint, Arc<Mutex<Option<Fingerprint>>>)>,
}

impl ControlClient {
    /// Finds the daemon of `config`: the address it bound (recorded in its
    /// data directory) or the configured one, and its token.
    pub fn for_config(config: &Config) -> Result<Self, ClientError> {
        let data = DataDir::open(&config.instance.data_dir)?;
        let token = data
            .read(files::CONTROL_TOKEN)?
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
            .ok_or_else(|| ClientError::NoToken(config.instance.data_dir.clone()))?;
        let addr = data
            .read(files::CONTROL_ADDR)?
            .and_then(|bytes| String::from_utf8_lossy(&bytes).trim().parse().ok())
            .unwrap_or(config.instance.control);
        Ok(Self {
            http: plain_http()?,
            base: format!("http://{addr}"),
            credentials: Credentials::Token(token),
            pinned: None,
        })
    }

    /// A client of the appliance at `url` (`https://HOST[:PORT]`) that
    /// accepts only the certificate whose SHA-256 is `fingerprint`.
    pub fn remote(
        url: &str,
        fingerprint: Fingerprint,
        credentials: Credentials,
    ) -> Result<Self, ClientError> {
        let parsed = url::Url::parse(url).map_err(|_| ClientError::BadUrl(url.to_owned()))?;
        if parsed.scheme() != "https" || parsed.host_str().is_none() || parsed.path() != "/" {
            return Err(ClientError::BadUrl(url.to_owned()));
        }
        let shown = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&shown);
        let pins = Pins::new(move |presented| {
            *seen.lock() = Some(*presented);
            *presented == fingerprint
        });
        let tls = pinned_https_client(pins).map_err(|err| ClientError::Tls(err.to_string()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            http,
            base: parsed.origin().ascii_serialization(),
            credentials,
            pinned: Some((fingerprint, shown)),
        })
    }

    /// The same daemon, asked with other credentials.
    pub fn with_credentials(&self, credentials: Credentials) -> Self {
        Self {
            credentials,
            ..self.clone()
        }
    }

    /// The daemon's status.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/api/v1/status").await
    }

    /// Counters, top lists and the last day minute by minute.
    pub async fn stats(&self) -> Result<StatsView, ClientError> {
        self.get("/api/v1/stats").await
    }

    /// One page of the query log.
    pub async fn query_log(&self, query: &LogQuery) -> Result<LogPageView, ClientError> {
        let path = "/api/v1/querylog";
        let request = self.http.get(self.url(path)).query(query);
        self.typed(path, request).await
    }

    /// The policy in force.
    pub async fn policy(&self) -> Result<PolicyView, ClientError> {
        self.get("/api/v1/policy").await
    }

    /// This appliance's tuning.
    pub async fn tuning(&self) -> Result<Tuning, ClientError> {
        let view: TuningView = self.get("/api/v1/tuning").await?;
        Ok(view.tuning)
    }

    /// Makes the daemon read its configuration again.
    pub async fn reload(&self) -> Result<Applied, ClientError> {
        self.post("/api/v1/reload", &serde_json::json!({})).await
    }

    /// Pauses blocking, for a duration such as `"5m"` or until resumed.
    pub async fn pause(&self, duration: Option<String>) -> Result<PauseState, ClientError> {
        self.post("/api/v1/pause", &PauseBody { duration }).await
    }

    /// Resumes blocking.
    pub async fn resume(&self) -> Result<PauseState, ClientError> {
        self.post("/api/v1/resume", &serde_json::json!({})).await
    }

    /// On the primary: a one-time pairing code, valid for `valid` (`"10m"`
    /// unless given).
    pub async fn pairing_code(&self, valid: Option<String>) -> Result<PairingCode, ClientError> {
        self.post("/api/v1/pairing-code", &CodeBody { valid }).await
    }

    /// Pairs the daemon with the primary at `address` (the one on the LAN,
    /// found by mDNS, when none); the primary it pinned.
    pub async fn join(&self, address: Option<&str>, code: &str) -> Result<PrimaryPin, ClientError> {
        let body = JoinBody {
            address: address.map(str::to_owned),
            code: code.to_owned(),
        };
        self.post("/api/v1/join", &body).await
    }

    /// On the primary: its replicas.
    pub async fn replicas(&self) -> Result<Vec<ReplicaView>, ClientError> {
        self.get("/api/v1/replicas").await
    }

    /// On the primary: closes a replica's connection and refuses it from now on.
    pub async fn revoke(&self, name: &str) -> Result<Revoked, ClientError> {
        self.post(
            &format!("/api/v1/replicas/{name}/revoke"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Sends `method path` (`/api/v1/…`, `/metrics`) with `body` as JSON, if
    /// any, and returns the answer whatever its status.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<RawResponse, ClientError> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Ok(RawResponse {
            status,
            headers,
            text,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.typed(path, self.http.get(self.url(path))).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        self.typed(path, self.http.post(self.url(path)).json(body))
            .await
    }

    /// Sends `request` and reads a successful answer as a `T`.
    async fn typed<T: DeserializeOwned>(
        &self,
        path: &str,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|body| body.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| status.as_str().to_owned());
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_str(&text).map_err(|reason| ClientError::Malformed {
            path: path.to_owned(),
            reason,
        })
    }

    async fn send(&self, request: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let request = match &self.credentials {
            Credentials::Anonymous => request,
            Credentials::Token(token) => request.bearer_auth(token),
            // As a browser does: the page it runs in is the appliance's own.
            Credentials::Session(id) => request
                .header("cookie", format!("{SESSION_COOKIE}={id}"))
                .header("origin", &self.base),
        };
        request.send().await.map_err(|reason| {
            if let Some((pinned, shown)) = &self.pinned
                && let Some(presented) = *shown.lock()
                && presented != *pinned
            {
                return ClientError::WrongCertificate {
                    url: self.base.clone(),
                    presented,
                    pinned: *pinned,
                };
            }
            ClientError::Unreachable {
                at: self.base.clone(),
                reason,
            }
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// An HTTP client for plain HTTP on loopback; reqwest still wants a TLS
/// backend, so it gets ring with no roots.
fn plain_http() -> Result<reqwest::Client, ClientError> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| ClientError::Tls(err.to_string()))?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(ClientError::Build)
}
