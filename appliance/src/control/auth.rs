//! Who may use the control API: scripts with the bearer token from the
//! data directory, browsers with a session cookie got by logging in with
//! the admin password (argon2-hashed, set on first use). Failed logins
//! are throttled per client and in all, and hashes are bounded
//! (`throttle.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::{HeaderMap, header};
use parking_lot::Mutex;

use super::throttle::{Admitted, HashSlots, LoginThrottle};
use crate::store::{Access, DataDir, StoreError, files};

/// Name of the browser session cookie.
pub(super) const SESSION_COOKIE: &str = "moat_session";
/// How long a browser session lasts.
pub(super) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Shortest admin password accepted.
const MIN_PASSWORD_CHARS: usize = 8;

/// Why a login or password change was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum AuthError {
    /// Too many wrong passwords from this client, or from all together.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// Too many logins are waiting for the password hash already.
    #[error("too many logins at once; try again in a second")]
    Busy,
    /// The password is wrong.
    #[error("wrong password")]
    WrongPassword,
    /// No admin password is set yet.
    #[error("no admin password is set yet")]
    NoPassword,
    /// The password was set before.
    #[error("the admin password is already set")]
    AlreadySet,
    /// A first password can only come from this machine or with the token.
    #[error("the first admin password can be set only from this machine or with the control token")]
    SetupNotAllowed,
    /// The new password is too short.
    #[error("the password needs at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// The password store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The control API's credentials and live sessions.
#[derive(Debug)]
pub(super) struct Auth {
    token: String,
    data: DataDir,
    password_hash: Mutex<Option<String>>,
    /// Session id → expiry, Unix milliseconds.
    sessions: Mutex<HashMap<String, u64>>,
    throttle: Mutex<LoginThrottle>,
    hashing: HashSlots,
}

/// What login attempts met since start, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LoginStats {
    /// Passwords hashed.
    pub(super) hashed: u64,
    /// Attempts refused by the lockout or the global failure budget.
    pub(super) throttled: u64,
    /// Attempts refused because the hash queue was full.
    pub(super) busy: u64,
    /// Most hashes that ran at once.
    pub(super) peak_hashing: u64,
}

impl Auth {
    /// Loads the token (created on first start) and the password hash.
    pub(super) fn load(data: DataDir) -> Result<Self, StoreError> {
        let token = data.control_token()?;
        let password_hash = data
            .read(files::ADMIN_PASSWORD)?
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
            .filter(|hash| PasswordHash::new(hash).is_ok());
        Ok(Self {
            token,
            data,
            password_hash: Mutex::new(password_hash),
            sessions: Mutex::new(HashMap::new()),
            throttle: Mutex::new(LoginThrottle::default()),
            hashing: HashSlots::default(),
        })
    }

    /// Whether an admin password was set.
    pub(super) fn password_set(&self) -> bool {
        self.password_hash.lock().is_some()
    }

    /// Whether the request carries the bearer token or a live session.
    pub(super) fn admits(&self, headers: &HeaderMap, now_ms: u64) -> bool {
        self.has_token(headers)
            || session_id(headers).is_some_and(|id| {
                let mut sessions = self.sessions.lock();
                sessions.retain(|_, expires| *expires > now_ms);
                sessions.contains_key(id)
            })
    }

    /// Whether the request carries the bearer token.
    pub(super) fn has_token(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|presented| constant_time_eq(presented.as_bytes(), self.token.as_bytes()))
    }

    /// Sets the first admin password and opens a session.
    pub(super) async fn set_first_password(
        &self,
        password: String,
        trusted: bool,
        now_ms: u64,
    ) -> Result<String, AuthError> {
        if !trusted {
            return Err(AuthError::SetupNotAllowed);
        }
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(AuthError::TooShort);
        }
        if self.password_set() {
            return Err(AuthError::AlreadySet);
        }
        let admitted = self.hashing.admit().ok_or(AuthError::Busy)?;
        let hash = self
            .hash(&admitted, move || hash_password(&password))
            .await??;
        let mut stored = self.password_hash.lock();
        if stored.is_some() {
            return Err(AuthError::AlreadySet);
        }
        self.data
            .write(files::ADMIN_PASSWORD, hash.as_bytes(), Access::Secret)?;
        *stored = Some(hash);
        drop(stored);
        Ok(self.open_session(now_ms))
    }

    /// Checks a password from `client`; a right one opens a session. The
    /// attempt counts as a failure from before its hash starts until the
    /// hash says it was right, and waits for one of the few hash slots.
    pub(super) async fn login(
        &self,
        client: IpAddr,
        password: String,
        now_ms: u64,
    ) -> Result<String, AuthError> {
        let hash = self
            .password_hash
            .lock()
            .clone()
            .ok_or(AuthError::NoPassword)?;
        let admitted = self.hashing.admit().ok_or(AuthError::Busy)?;
        let key = self
            .throttle
            .lock()
            .attempt(client, now_ms)
            .map_err(|wait| {
                self.hashing
                    .counters()
                    .throttled
                    .fetch_add(1, Ordering::Relaxed);
                AuthError::Throttled(wait)
            })?;
        if !self
            .hash(&admitted, move || verify(&password, &hash))
            .await??
        {
            return Err(AuthError::WrongPassword);
        }
        self.throttle.lock().succeeded(key);
        Ok(self.open_session(now_ms))
    }

    /// Runs `work` in a hash slot.
    async fn hash<T: Send + 'static>(
        &self,
        admitted: &Admitted,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        self.hashing
            .run(admitted, work)
            .await
            .ok_or_else(|| AuthError::Hash("the hashing task ended".into()))
    }

    /// What login attempts met since start.
    pub(super) fn login_stats(&self) -> LoginStats {
        let counters = self.hashing.counters();
        LoginStats {
            hashed: counters.hashed.load(Ordering::Relaxed),
            throttled: counters.throttled.load(Ordering::Relaxed),
            busy: counters.busy.load(Ordering::Relaxed),
            peak_hashing: counters.peak_running.load(Ordering::Relaxed) as u64,
        }
    }

    /// Ends the request's session, if it has one.
    pub(super) fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = session_id(headers) {
            self.sessions.lock().remove(id);
        }
    }

    fn open_session(&self, now_ms: u64) -> String {
        let id: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        self.sessions
            .lock()
            .insert(id.clone(), now_ms + SESSION_LIFETIME.as_millis() as u64);
        id
    }
}

/// The `Set-Cookie` value that gives the browser session `id`.
pub(super) fn session_cookie(id: &str) -> String {
    format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that ends the browser session.
pub(super) fn expired_cookie() -> String {
    format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
        })
}

/// A new argon2id PHC string for `password`, with OWASP's 9 MiB, four
/// pass setting rather than the crate's 19 MiB, two pass one: as strong,
/// and the two hashes the control plane runs at once stay within the
/// appliance's idle memory. Verifying reads the setting from the hash, so
/// older hashes still verify.
fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let params = argon2::Params::new(9 * 1024, 4, 1, None)
        .map_err(|err| AuthError::Hash(err.to_string()))?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| AuthError::Hash(err.to_string()))
}

/// Whether `password` is the one `hash` was made from.
fn verify(password: &str, hash: &str) -> Result<bool, AuthError> {
    let parsed = PasswordHash::new(hash).map_err(|err| AuthError::Hash(err.to_string()))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_sessions_and_token() {
        let root = std::env::temp_dir().join(format!("moat-auth-{}", std::process::id()));
        let auth = Auth::load(DataDir::open(&root).unwrap()).unwrap();
        assert!(!auth.password_set());
        assert!(matches!(
            auth.set_first_password("long enough".into(), false, 0)
                .await,
            Err(AuthError::SetupNotAllowed)
        ));
        assert!(matches!(
            auth.set_first_password("short".into(), true, 0).await,
            Err(AuthError::TooShort)
        ));
        auth.set_first_password("long enough".into(), true, 0)
            .await
            .unwrap();
        assert!(matches!(
            auth.set_first_password("another one".into(), true, 0).await,
            Err(AuthError::AlreadySet)
        ));
        assert!(matches!(
            auth.login(CLIENT, "wrong password".into(), 0).await,
            Err(AuthError::WrongPassword)
        ));
        let session = auth.login(CLIENT, "long enough".into(), 0).await.unwrap();
        assert_eq!(auth.login_stats().hashed, 3, "one setup, two logins");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("other=1; {SESSION_COOKIE}={session}")
                .parse()
                .unwrap(),
        );
        assert!(auth.admits(&headers, 1));
        assert!(!auth.admits(&headers, SESSION_LIFETIME.as_millis() as u64 + 1));
        let reloaded = Auth::load(DataDir::open(&root).unwrap()).unwrap();
        assert!(reloaded.password_set(), "the hash is kept on disk");
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", reloaded.token).parse().unwrap(),
        );
        assert!(reloaded.admits(&bearer, 0));
        std::fs::remove_dir_all(root).unwrap();
    }
}
