//! The tests' side of the control API: the appliance's own client
//! ([`ControlClient`], typed, as the CLI uses it) and, for tests that
//! examine the API itself (who may do what, status codes, bodies it must
//! refuse), raw requests over that same client.

use std::future::Future;

pub use moat::control::{ControlClient, Credentials, RawResponse};
use reqwest::Method;
use serde_json::Value;

/// Raw requests whatever the answer's status; a daemon that does not answer
/// fails the test.
pub trait RawApi {
    /// Sends `method path` with an optional JSON body.
    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> impl Future<Output = RawResponse> + Send;

    /// GET `path`.
    fn get(&self, path: &str) -> impl Future<Output = RawResponse> + Send {
        self.send(Method::GET, path, None)
    }

    /// POST `body` to `path`.
    fn post(&self, path: &str, body: &Value) -> impl Future<Output = RawResponse> + Send {
        self.send(Method::POST, path, Some(body))
    }

    /// PUT `body` to `path`.
    fn put(&self, path: &str, body: &Value) -> impl Future<Output = RawResponse> + Send {
        self.send(Method::PUT, path, Some(body))
    }
}

impl RawApi for ControlClient {
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> RawResponse {
        self.request(method.clone(), path, body)
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    }
}
