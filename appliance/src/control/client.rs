//! The CLI's side of the control endpoint.

use std::net::SocketAddr;

use serde_json::Value;

use crate::config::Config;
use crate::store::{DataDir, StoreError, files};

/// Why the CLI could not talk to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The token or address could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No token: the daemon has never run with this data directory.
    #[error("no control token in {0}: is moat running with this config?")]
    NoToken(String),
    /// The daemon did not answer.
    #[error("cannot reach moat at {addr}: {reason} (is it running?)")]
    Unreachable {
        /// Where we looked.
        addr: SocketAddr,
        /// The transport error.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("moat refused: {0}")]
    Refused(String),
}

/// A client for the local daemon's control endpoint.
#[derive(Debug)]
pub struct ControlClient {
    http: reqwest::Client,
    base: String,
    addr: SocketAddr,
    token: String,
}

impl ControlClient {
    /// Finds the daemon of `config`: the address it bound (recorded in its
    /// data directory) or the configured one, and its token.
    pub fn for_config(config: &Config) -> Result<Self, ClientError> {
        let data = DataDir::open(&config.instance.data_dir)?;
        let token = data
            .read(files::CONTROL_TOKEN)?
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
            .ok_or_else(|| ClientError::NoToken(config.instance.data_dir.display().to_string()))?;
        let addr = data
            .read(files::CONTROL_ADDR)?
            .and_then(|bytes| String::from_utf8_lossy(&bytes).trim().parse().ok())
            .unwrap_or(config.instance.control);
        // Plain HTTP on loopback; reqwest still wants a TLS backend, so give it ring.
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| ClientError::Refused(err.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|err| ClientError::Refused(err.to_string()))?;
        Ok(Self {
            http,
            base: format!("http://{addr}/api/v1"),
            addr,
            token,
        })
    }

    /// GETs an API path, e.g. `status`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(format!("{}/{path}", self.base)))
            .await
    }

    /// POSTs a JSON body to an API path.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.http.post(format!("{}/{path}", self.base)).json(body))
            .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|err| ClientError::Unreachable {
                addr: self.addr,
                reason: err.to_string(),
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let reason = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or(status.as_str())
                .to_owned();
            return Err(ClientError::Refused(reason));
        }
        Ok(body)
    }
}
