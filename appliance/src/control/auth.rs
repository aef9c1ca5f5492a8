//! Who may use the control API: scripts with the bearer token from the
//! data directory, browsers with a session cookie got by logging in with
//! the admin password (argon2-hashed). The first password needs the
//! one-time setup code kept in the data directory while no password exists
//! (shown in the log and, on the image, on the console and the boot
//! partition), or the token. Failed logins and wrong setup codes are
//! throttled per client and in all, and hashes are bounded (`throttle.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::{HeaderMap, header};
use moat_proto::pairing::PairingCode;
use parking_lot::Mutex;
use rand::TryRngCore;
use rand::rngs::OsRng;

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
pub(crate) enum AuthError {
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
    /// The first password needs the setup code (or the token).
    #[error(
        "wrong or missing setup code: the first admin password needs the code shown in the \
         log (and on the appliance's console and boot partition), or the control token"
    )]
    WrongSetupCode,
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
    /// What lets the first password be set, while none is.
    setup_code: Option<PairingCode>,
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
    /// Loads the token (created on first start) and the password hash, or
    /// while there is none the setup code (made on first start), which it
    /// logs.
    pub(super) fn load(data: DataDir) -> Result<Self, StoreError> {
        let token = data.control_token()?;
        let password_hash = stored_hash(&data)?;
        let setup_code = setup_code(&data)?;
        if let Some(code) = setup_code {
            tracing::warn!(
                "no admin password yet: the setup code is {code} (also in {}); the web UI asks \
                 for it, then for the new password",
                data.path(files::SETUP_CODE).display()
            );
        }
        Ok(Self {
            token,
            data,
            password_hash: Mutex::new(password_hash),
            setup_code,
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

    /// Sets the first admin password and opens a session. `proof` is the
    /// setup code `client` typed, or `None` for a request with the token;
    /// a wrong code counts against `client` as a wrong password does.
    pub(super) async fn set_first_password(
        &self,
        client: IpAddr,
        proof: Option<&str>,
        password: String,
        now_ms: u64,
    ) -> Result<String, AuthError> {
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(AuthError::TooShort);
        }
        if self.password_set() {
            return Err(AuthError::AlreadySet);
        }
        if let Some(typed) = proof {
            let key = self.attempt(client, now_ms)?;
            let right = self.setup_code.is_some_and(|code| {
                PairingCode::parse(typed).is_ok_and(|typed| {
                    constant_time_eq(typed.normalized().as_bytes(), code.normalized().as_bytes())
                })
            });
            if !right {
                return Err(AuthError::WrongSetupCode);
            }
            self.throttle.lock().succeeded(key);
        }
        let admitted = self.hashing.admit().ok_or(AuthError::Busy)?;
        let hash = self
            .hash(&admitted, move || hash_password(&password))
            .await??;
        let mut stored = self.password_hash.lock();
        if stored.is_some() {
            return Err(AuthError::AlreadySet);
        }
        store_hash(&self.data, &hash)?;
        *stored = Some(hash);
        drop(stored);
        Ok(self.open_session(now_ms))
    }

    /// Admits a guess from `client` (a password or a setup code), counted
    /// as a failure until it proves right.
    fn attempt(
        &self,
        client: IpAddr,
        now_ms: u64,
    ) -> Result<super::throttle::ClientKey, AuthError> {
        self.throttle
            .lock()
            .attempt(client, now_ms)
            .map_err(|wait| {
                self.hashing
                    .counters()
                    .throttled
                    .fetch_add(1, Ordering::Relaxed);
                AuthError::Throttled(wait)
            })
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
        let key = self.attempt(client, now_ms)?;
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

/// The admin password's hash kept in `data`, if one was set.
fn stored_hash(data: &DataDir) -> Result<Option<String>, StoreError> {
    Ok(data
        .read(files::ADMIN_PASSWORD)?
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .filter(|hash| PasswordHash::new(hash).is_ok()))
}

/// Keeps `hash` as the admin password's; the setup code is spent.
fn store_hash(data: &DataDir, hash: &str) -> Result<(), StoreError> {
    data.write(files::ADMIN_PASSWORD, hash.as_bytes(), Access::Secret)?;
    data.remove(files::SETUP_CODE)
}

/// The setup code kept in `data` (made there on first use) while no admin
/// password exists; `None` once one does.
pub(crate) fn setup_code(data: &DataDir) -> Result<Option<PairingCode>, StoreError> {
    if stored_hash(data)?.is_some() {
        return Ok(None);
    }
    let kept = data
        .read(files::SETUP_CODE)?
        .and_then(|bytes| PairingCode::parse(String::from_utf8_lossy(&bytes).trim()).ok());
    if let Some(code) = kept {
        return Ok(Some(code));
    }
    let code = PairingCode::generate(&mut OsRng.unwrap_err());
    data.write(
        files::SETUP_CODE,
        format!("{code}\n").as_bytes(),
        Access::Secret,
    )?;
    Ok(Some(code))
}

/// Sets the admin password of `data` unless one is set (init, from the
/// first-boot settings); whether it did.
pub(crate) fn set_password_offline(data: &DataDir, password: &str) -> Result<bool, AuthError> {
    if stored_hash(data)?.is_some() {
        return Ok(false);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::TooShort);
    }
    store_hash(data, &hash_password(password)?)?;
    Ok(true)
}

/// The `Set-Cookie` value that gives the browser session `id`, `Secure`
/// when it is sent over HTTPS.
pub(super) fn session_cookie(id: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends the browser session.
pub(super) fn expired_cookie() -> String {
    format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Whether the request carries a session cookie (live or not).
pub(super) fn carries_session(headers: &HeaderMap) -> bool {
    session_id(headers).is_some()
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
        let code = auth
            .setup_code
            .expect("a setup code while no password exists");
        let kept = Auth::load(DataDir::open(&root).unwrap()).unwrap();
        assert_eq!(kept.setup_code, Some(code), "the same code at every start");
        let set = |proof: Option<String>, password: &str| {
            let (auth, password) = (&auth, password.to_owned());
            async move {
                auth.set_first_password(CLIENT, proof.as_deref(), password, 0)
                    .await
            }
        };
        for wrong in ["", "AAAA-AAAA", "not a code"] {
            assert!(matches!(
                set(Some(wrong.into()), "long enough").await,
                Err(AuthError::WrongSetupCode)
            ));
        }
        assert!(matches!(
            set(Some(code.to_string()), "short").await,
            Err(AuthError::TooShort)
        ));
        let typed = code.to_string().to_lowercase().replace('-', " ");
        set(Some(typed), "long enough").await.unwrap();
        assert!(
            !root.join(files::SETUP_CODE).exists(),
            "the code is spent with the first password"
        );
        assert!(matches!(
            set(None, "another one").await,
            Err(AuthError::AlreadySet)
        ));
        assert!(matches!(
            auth.login(CLIENT, "wrong password".into(), 0).await,
            Err(AuthError::WrongPassword)
        ));
        let session = auth.login(CLIENT, "long enough".into(), 0).await.unwrap();
        assert_eq!(auth.login_stats().hashed, 3, "one setup, two logins");
        assert!(reloaded_has_no_code(&root));
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

    fn reloaded_has_no_code(root: &std::path::Path) -> bool {
        let reloaded = Auth::load(DataDir::open(root).unwrap()).unwrap();
        reloaded.setup_code.is_none() && setup_code(&reloaded.data).unwrap().is_none()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_setup_codes_are_throttled_and_the_token_needs_none() {
        let root = std::env::temp_dir().join(format!("moat-auth-code-{}", std::process::id()));
        let auth = Auth::load(DataDir::open(&root).unwrap()).unwrap();
        let code = auth.setup_code.unwrap().to_string();
        for _ in 0..6 {
            assert!(matches!(
                auth.set_first_password(CLIENT, Some("0000-0000"), "long enough".into(), 0)
                    .await,
                Err(AuthError::WrongSetupCode)
            ));
        }
        assert!(matches!(
            auth.set_first_password(CLIENT, Some(&code), "long enough".into(), 1)
                .await,
            Err(AuthError::Throttled(_))
        ));
        assert_eq!(auth.login_stats().hashed, 0, "no guess reached a hash");
        auth.set_first_password(CLIENT, None, "long enough".into(), 2)
            .await
            .expect("the token's holder needs no code");
        assert!(auth.password_set());
        let offline = DataDir::open(&root.join("offline")).unwrap();
        assert!(set_password_offline(&offline, "long enough").unwrap());
        assert!(!set_password_offline(&offline, "another one").unwrap());
        assert!(setup_code(&offline).unwrap().is_none());
        std::fs::remove_dir_all(root).unwrap();
    }
}
