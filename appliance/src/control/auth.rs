//! Who may use the control API: scripts with the bearer token from the
//! data directory, browsers with a session cookie got by logging in with
//! the admin password (argon2-hashed, set on first use). Failed logins
//! are throttled per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::{HeaderMap, header};
use parking_lot::Mutex;

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
    /// Too many wrong passwords from this address.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
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

/// Failed-login bookkeeping per client address: a pure state machine fed
/// with the time, so its rules are tested without waiting.
#[derive(Debug, Default)]
pub(super) struct LoginThrottle {
    clients: HashMap<IpAddr, Failures>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until_ms: u64,
    last_ms: u64,
}

impl LoginThrottle {
    /// Wrong passwords allowed before each further one locks the address out.
    const FREE_FAILURES: u32 = 5;
    /// The longest lockout.
    const MAX_LOCKOUT_MS: u64 = 15 * 60 * 1000;
    /// Addresses tracked at most; the longest-quiet one is forgotten first.
    const MAX_CLIENTS: usize = 4096;

    /// How long `client` must still wait before trying, if at all.
    pub(super) fn wait(&self, client: IpAddr, now_ms: u64) -> Option<Duration> {
        let failures = self.clients.get(&client)?;
        (failures.blocked_until_ms > now_ms)
            .then(|| Duration::from_millis(failures.blocked_until_ms - now_ms))
    }

    /// Records a wrong password: the sixth and later ones lock the
    /// address out for 1, 2, 4 … seconds, up to 15 minutes.
    pub(super) fn failed(&mut self, client: IpAddr, now_ms: u64) {
        if self.clients.len() >= Self::MAX_CLIENTS && !self.clients.contains_key(&client) {
            let quietest = self
                .clients
                .iter()
                .min_by_key(|(_, failures)| failures.last_ms)
                .map(|(client, _)| *client);
            if let Some(quietest) = quietest {
                self.clients.remove(&quietest);
            }
        }
        let failures = self.clients.entry(client).or_insert(Failures {
            count: 0,
            blocked_until_ms: 0,
            last_ms: now_ms,
        });
        failures.count += 1;
        failures.last_ms = now_ms;
        if failures.count > Self::FREE_FAILURES {
            let doublings = (failures.count - Self::FREE_FAILURES - 1).min(20);
            let lockout = (1000u64 << doublings).min(Self::MAX_LOCKOUT_MS);
            failures.blocked_until_ms = now_ms + lockout;
        }
    }

    /// Forgets an address's failures after a right password.
    pub(super) fn succeeded(&mut self, client: IpAddr) {
        self.clients.remove(&client);
    }
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
    pub(super) fn set_first_password(
        &self,
        password: &str,
        trusted: bool,
        now_ms: u64,
    ) -> Result<String, AuthError> {
        if !trusted {
            return Err(AuthError::SetupNotAllowed);
        }
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(AuthError::TooShort);
        }
        let mut stored = self.password_hash.lock();
        if stored.is_some() {
            return Err(AuthError::AlreadySet);
        }
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|err| AuthError::Hash(err.to_string()))?
            .to_string();
        self.data
            .write(files::ADMIN_PASSWORD, hash.as_bytes(), Access::Secret)?;
        *stored = Some(hash);
        drop(stored);
        Ok(self.open_session(now_ms))
    }

    /// Checks a password from `client`; a right one opens a session.
    /// Blocking: argon2 takes tens of milliseconds on purpose.
    pub(super) fn login(
        &self,
        client: IpAddr,
        password: &str,
        now_ms: u64,
    ) -> Result<String, AuthError> {
        if let Some(wait) = self.throttle.lock().wait(client, now_ms) {
            return Err(AuthError::Throttled(wait));
        }
        let hash = self
            .password_hash
            .lock()
            .clone()
            .ok_or(AuthError::NoPassword)?;
        let parsed = PasswordHash::new(&hash).map_err(|err| AuthError::Hash(err.to_string()))?;
        if Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_err()
        {
            self.throttle.lock().failed(client, now_ms);
            return Err(AuthError::WrongPassword);
        }
        self.throttle.lock().succeeded(client);
        Ok(self.open_session(now_ms))
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn five_free_failures_then_doubling_lockouts() {
        let mut throttle = LoginThrottle::default();
        for attempt in 0..5 {
            assert_eq!(throttle.wait(CLIENT, attempt), None);
            throttle.failed(CLIENT, attempt);
        }
        assert_eq!(throttle.wait(CLIENT, 10), None);
        throttle.failed(CLIENT, 10);
        assert_eq!(throttle.wait(CLIENT, 10), Some(Duration::from_secs(1)));
        assert_eq!(throttle.wait(CLIENT, 1010), None);
        throttle.failed(CLIENT, 1010);
        assert_eq!(throttle.wait(CLIENT, 1010), Some(Duration::from_secs(2)));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 8));
        assert_eq!(
            throttle.wait(other, 1010),
            None,
            "other clients are not hit"
        );
        for _ in 0..40 {
            throttle.failed(CLIENT, 5000);
        }
        assert_eq!(
            throttle.wait(CLIENT, 5000),
            Some(Duration::from_millis(LoginThrottle::MAX_LOCKOUT_MS))
        );
        throttle.succeeded(CLIENT);
        assert_eq!(throttle.wait(CLIENT, 5000), None);
    }

    #[test]
    fn the_throttle_stays_bounded() {
        let mut throttle = LoginThrottle::default();
        for index in 0..(LoginThrottle::MAX_CLIENTS as u32 + 100) {
            throttle.failed(IpAddr::V4(index.into()), u64::from(index));
        }
        assert_eq!(throttle.clients.len(), LoginThrottle::MAX_CLIENTS);
    }

    #[test]
    fn password_sessions_and_token() {
        let root = std::env::temp_dir().join(format!("moat-auth-{}", std::process::id()));
        let auth = Auth::load(DataDir::open(&root).unwrap()).unwrap();
        assert!(!auth.password_set());
        assert!(matches!(
            auth.set_first_password("long enough", false, 0),
            Err(AuthError::SetupNotAllowed)
        ));
        assert!(matches!(
            auth.set_first_password("short", true, 0),
            Err(AuthError::TooShort)
        ));
        auth.set_first_password("long enough", true, 0).unwrap();
        assert!(matches!(
            auth.set_first_password("another one", true, 0),
            Err(AuthError::AlreadySet)
        ));
        assert!(matches!(
            auth.login(CLIENT, "wrong password", 0),
            Err(AuthError::WrongPassword)
        ));
        let session = auth.login(CLIENT, "long enough", 0).unwrap();
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
