//! The real `moat` binary as a child process on loopback ports chosen by
//! the kernel, killed (by PID) when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use moat::config::Config;
use moat::control::{ControlClient, Credentials};
use moat::daemon::Status;

use crate::client::DnsClient;

/// The admin password the tests set (over the API and in the browser).
pub const PASSWORD: &str = "correct horse battery";

/// The binary every [`MoatProcess`] and [`MoatProcess::cli`] runs.
static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Builds the binary as [`binary`] does, copies it to `dir/moat`, and makes
/// [`binary`] return that copy from then on (unless something used
/// [`binary`] before): a benchmark running for minutes keeps one build
/// even if another build replaces the one in a shared target directory.
pub fn pin_binary_copy(dir: &Path) -> &'static Path {
    let copy = dir.join("moat");
    std::fs::copy(build_binary(), &copy).expect("copy the moat binary");
    let _ = BINARY.set(copy);
    binary()
}

/// Path of the `moat` binary, built once per test run in the same profile
/// as the tests.
pub fn binary() -> &'static Path {
    BINARY.get_or_init(build_binary)
}

fn build_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // The whole workspace, as scripts/test.sh builds it: one feature set, one build.
    build.args(["build", "--quiet", "--workspace", "--bins"]);
    // Cargo gives the running test its package's variables. Build scripts
    // watch some (ring: CARGO_PKG_NAME, CARGO_MANIFEST_DIR, …), so passing
    // them on would rebuild ring and all above it here, and again in the
    // next top-level cargo run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            build.env_remove(name.as_ref());
        }
    }
    if release {
        build.arg("--release");
    }
    // target/<triple>/<profile> when the tests were built with --target: the
    // target root is the directory cargo tags with CACHEDIR.TAG.
    if let Some(triple) = profile_dir
        .parent()
        .filter(|dir| !dir.join("CACHEDIR.TAG").exists())
        .and_then(Path::file_name)
    {
        build.arg("--target").arg(triple);
    }
    let status = build.status().expect("run cargo build for the moat binary");
    assert!(status.success(), "building the moat binary failed");
    let binary = profile_dir.join("moat");
    assert!(
        binary.exists(),
        "moat binary missing at {}",
        binary.display()
    );
    binary
}

/// A fresh scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates a new empty directory under the system temp dir.
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let index = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("moat-test-{}-{label}-{index}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `moat run`.
#[derive(Debug)]
pub struct MoatProcess {
    child: Child,
    /// Where its config, data and log live.
    pub dir: Scratch,
    /// Its configuration file.
    pub config_path: PathBuf,
    /// Its DNS addresses on 127.0.0.1.
    pub dns: DnsClient,
    /// Its DNS addresses on ::1.
    pub dns6: DnsClient,
}

impl MoatProcess {
    /// Starts moat with `[instance]` pointing at loopback port 0 and a
    /// scratch data dir, plus `extra_instance` lines, plus `rest` (tuning
    /// and policy tables).
    pub async fn start(extra_instance: &str, rest: &str) -> Self {
        Self::start_in(Scratch::new("moat"), extra_instance, rest).await
    }

    /// Starts moat as [`MoatProcess::start`] does, in `dir` (whose `data`
    /// may already be prepared, e.g. a small file system mounted there).
    pub async fn start_in(dir: Scratch, extra_instance: &str, rest: &str) -> Self {
        let config_path = dir.0.join("moat.toml");
        write_config(&config_path, &dir.0, extra_instance, rest);
        Self::spawn(dir, config_path).await
    }

    async fn spawn(dir: Scratch, config_path: PathBuf) -> Self {
        let data = dir.0.join("data");
        let _ = std::fs::remove_file(data.join("control.addr"));
        let _ = std::fs::remove_file(data.join("sync.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.0.join("moat.log"))
            .unwrap();
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info,moat=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start moat");
        let unknown = DnsClient {
            udp: ([0, 0, 0, 0], 0).into(),
            tcp: ([0, 0, 0, 0], 0).into(),
        };
        let mut process = Self {
            child,
            dir,
            config_path,
            dns: unknown,
            dns6: unknown,
        };
        let status = process.wait_ready().await;
        process.dns = DnsClient {
            udp: status.udp[0],
            tcp: status.tcp[0],
        };
        process.dns6 = DnsClient {
            udp: status.udp[1],
            tcp: status.tcp[1],
        };
        process
    }

    async fn wait_ready(&mut self) -> Status {
        for _ in 0..300 {
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!("moat exited during start ({exit}); log:\n{}", self.log());
            }
            if self.dir.0.join("data/control.addr").exists()
                && let Ok(status) = self.status().await
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moat not ready after 30 s; log:\n{}", self.log());
    }

    /// The status from the control endpoint.
    pub async fn status(&self) -> Result<Status, String> {
        self.control()?
            .status()
            .await
            .map_err(|err| err.to_string())
    }

    /// A control client for this instance, with its bearer token.
    pub fn control(&self) -> Result<ControlClient, String> {
        let config = Config::load(&self.config_path).map_err(|err| err.to_string())?;
        ControlClient::for_config(&config).map_err(|err| err.to_string())
    }

    /// The address its plain control endpoint bound, from
    /// `<data_dir>/control.addr`.
    pub fn control_addr(&self) -> SocketAddr {
        std::fs::read_to_string(self.dir.0.join("data/control.addr"))
            .expect("control.addr of a running moat")
            .trim()
            .parse()
            .expect("a control address")
    }

    /// The setup code the first admin password needs, from its data
    /// directory (the daemon made it at start).
    pub fn setup_code(&self) -> String {
        let file = self.dir.0.join("data/setup-code");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|err| panic!("{}: {err}; log:\n{}", file.display(), self.log()))
            .trim()
            .to_owned()
    }

    /// A control client for this running instance with `credentials`.
    pub fn api(&self, credentials: Credentials) -> ControlClient {
        self.control()
            .unwrap_or_else(|err| panic!("control client of a running moat: {err}"))
            .with_credentials(credentials)
    }

    /// The address its QUIC sync endpoint is bound to, read from
    /// `<data_dir>/sync.addr` (waits up to five seconds for the file).
    pub async fn sync_addr(&self) -> SocketAddr {
        let file = self.dir.0.join("data/sync.addr");
        for _ in 0..50 {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(addr) = text.trim().parse()
            {
                return addr;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no sync address in {} after 5 s; log:\n{}",
            file.display(),
            self.log()
        );
    }

    /// Runs a `moat` subcommand against this instance's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run moat cli")
    }

    /// Replaces the tuning and policy part of the config file.
    pub fn rewrite_config(&self, extra_instance: &str, rest: &str) {
        write_config(&self.config_path, &self.dir.0, extra_instance, rest);
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("moat.log")).unwrap_or_default()
    }

    /// Stops it (SIGKILL to its PID) and starts it again with the same
    /// directory; the new one has new ports.
    pub async fn restart(mut self) -> Self {
        self.terminate();
        let dir = std::mem::replace(&mut self.dir, Scratch::new("moved"));
        let config_path = self.config_path.clone();
        Self::spawn(dir, config_path).await
    }

    /// Asks it to stop (SIGTERM) and waits up to five seconds; does nothing
    /// if it has already exited (its PID may belong to someone else by now).
    pub fn terminate(&mut self) {
        if !self.is_running() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..50 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MoatProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago (bound, read,
/// released), for an instance that must keep its sync port across restarts.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("bind a loopback UDP port")
        .port()
}

/// Writes a config: `[instance]` with loopback port 0 everywhere (DNS,
/// control, sync) and a name, unless `extra_instance` sets `name` or `sync`
/// itself, local blocklists allowed from the temporary directory (where
/// tests keep them) unless it sets `source_dirs`, then `extra_instance`,
/// then `rest`.
fn write_config(path: &Path, dir: &Path, extra_instance: &str, rest: &str) {
    let mut text = String::from("[instance]\n");
    if !sets_key(extra_instance, "name") {
        text.push_str("name = \"test\"\n");
    }
    if !sets_key(extra_instance, "sync") {
        text.push_str("sync = \"127.0.0.1:0\"\n");
    }
    if !sets_key(extra_instance, "source_dirs") {
        let temp = std::env::temp_dir();
        text.push_str(&format!("source_dirs = [\"{}\"]\n", temp.display()));
    }
    if !sets_key(extra_instance, "listen") {
        text.push_str("listen = [\"127.0.0.1:0\", \"[::1]:0\"]\n");
    }
    text.push_str(&format!(
        "control = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra_instance}\n\n{rest}\n",
        dir.join("data").display()
    ));
    std::fs::write(path, text).unwrap();
}

/// Whether some line of `toml` assigns `key`.
fn sets_key(toml: &str, key: &str) -> bool {
    toml.lines().any(|line| {
        line.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}
