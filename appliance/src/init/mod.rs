//! Moat as process 1 on the appliance image: the duties of an init system,
//! and nothing more (gokrazy's way: the kernel plus one static binary).
//!
//! Boot runs in two stages, both this binary:
//!
//! 1. From the initramfs (`rdinit=/init`): mount devtmpfs, proc and sysfs,
//!    load the kernel modules the image lists (dependencies first), mount
//!    the read-only root slot (`moat.slot=a` → partition 2, `b` → 3) on
//!    `/slot` and exec `/slot/moat`, which stays process 1.
//! 2. From the root slot: mount the boot partition (1) read-only on `/boot`
//!    and the data partition (4) on `/data`; read the first-boot settings
//!    (`firstboot`); raise loopback and the network (DHCP or static); keep
//!    the clock from 1970 (the image's build time as a floor, then SNTP);
//!    start `moat run` and supervise it: restart it if it dies, backing off
//!    and falling back to safe mode when it cannot start (`supervisor`),
//!    reap every child, power off or reboot on the usual signals.
//!
//! Protocol logic is pure and unit-tested: the DHCP, SNTP and rtnetlink
//! codecs in the `moat-netproto` crate, the ext4 layout in `moat-mkfs`, and
//! `modules`, `firstboot` and `supervisor` here; the syscalls and sockets
//! live in the private shell modules (`net`, `netlink`, `system`).

pub(crate) mod firstboot;
pub(crate) mod modules;
mod net;
mod netlink;
pub(crate) mod supervisor;
mod system;

use std::collections::BTreeMap;
use std::error::Error;
use std::ffi::CString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use thiserror::Error;

use firstboot::{Network, Provisioning, Settings};
use moat_netproto::{dhcp, sntp};

/// The environment variable that tells the second stage it is one.
const STAGE_VAR: &str = "MOAT_INIT_STAGE";
/// The environment variable init starts the daemon with: it may ask init
/// to reboot (and to wipe `/data` at the next boot).
pub(crate) const SUPERVISED_VAR: &str = "MOAT_SUPERVISED_BY_INIT";
/// Where stage 1 mounts the root slot.
const SLOT_DIR: &str = "/slot";
/// The stored first-boot settings.
const STORED_SETTINGS: &str = "/data/settings.toml";
/// The daemon's configuration, made from the settings at every boot.
const DAEMON_CONFIG: &str = "/data/moat.toml";
/// Written once a replica has paired.
const JOINED_MARK: &str = "/data/joined";
/// The file a user puts on the boot partition to have `/data` wiped at
/// the next boot (a forgotten password): init removes it and starts over.
const RESET_FILE: &str = "/boot/moat-factory-reset";
/// Flags of the boot partition's mount.
const BOOT_FLAGS: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);
/// The setup code's copy on the boot partition, for a headless first setup.
const BOOT_SETUP_CODE: &str = "/boot/moat-setup-code.txt";
/// The first-boot settings on the boot partition.
const BOOT_SETTINGS: &str = "/boot/moat.toml";

/// Children a thread of init waits for, by PID. The supervisor reaps every
/// child (orphans included), so `Command::status` would lose the race for
/// the exit status; [`run_to_end`] gets it handed over from [`reap`].
static WAITERS: Mutex<BTreeMap<i32, mpsc::Sender<WaitStatus>>> = Mutex::new(BTreeMap::new());

/// Why init could not bring the appliance up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub(crate) enum InitError {
    /// A mount failed.
    #[error("mount {fstype} on {target}: {source}")]
    Mount {
        /// Mount point.
        target: PathBuf,
        /// File system type.
        fstype: String,
        /// The kernel's answer.
        source: nix::Error,
    },
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// The file or thing.
        what: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The module list names a module the image lacks.
    #[error(transparent)]
    Module(#[from] modules::UnknownModule),
    /// No disk has the partition.
    #[error("no disk with partition {0} appeared")]
    NoPartition(u32),
    /// No network interface appeared.
    #[error("no network interface appeared")]
    NoInterface,
    /// Configuring the network failed.
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    /// A syscall failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was tried.
        what: &'static str,
        /// The kernel's answer.
        source: nix::Error,
    },
}

/// Runs init; called by `main` first thing when the process id is 1. Never
/// returns: a failure is printed on the console and the machine restarts
/// after a pause (an appliance has no one to type at a shell).
pub fn main() -> ! {
    let result = if std::env::var_os(STAGE_VAR).is_some() {
        stage_root()
    } else {
        stage_initramfs()
    };
    if let Err(err) = result {
        eprintln!("moat init: {err}; restarting in 30 s");
    }
    std::thread::sleep(Duration::from_secs(30));
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Stage 1, from the initramfs.
fn stage_initramfs() -> Result<(), InitError> {
    system::mount_kernel_filesystems()?;
    system::attach_console();
    eprintln!("moat init: stage 1 (initramfs)");
    let loaded = system::load_modules(Path::new("/lib/modules"))?;
    eprintln!("moat init: {loaded} kernel modules loaded");
    let slot = system::cmdline_param("moat.slot").unwrap_or_else(|| "a".into());
    let number = if slot == "b" { 3 } else { 2 };
    let device = system::partition(number, Duration::from_secs(30))?;
    system::mount_fs(
        &device.to_string_lossy(),
        SLOT_DIR,
        "squashfs",
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None,
    )?;
    eprintln!(
        "moat init: root slot {slot} ({}) on {SLOT_DIR}",
        device.display()
    );
    // The initramfs copies are no longer needed: give their memory back.
    let _ = fs::remove_dir_all("/lib/modules");
    let _ = fs::remove_file("/init");
    let path = CString::new(format!("{SLOT_DIR}/moat")).unwrap_or_default();
    let stage = CString::new(format!("{STAGE_VAR}=root")).unwrap_or_default();
    let error = nix::unistd::execve(&path, &[c"moat"], &[stage.as_c_str()]);
    Err(InitError::Sys {
        what: "exec the root slot's moat",
        source: error.unwrap_err(),
    })
}

/// Stage 2, from the root slot.
fn stage_root() -> Result<(), InitError> {
    eprintln!("moat init: stage 2 (root slot)");
    // Ctrl-Alt-Del becomes SIGINT, handled below.
    let _ = set_cad_enabled(false);
    // Signals are taken by `sigwait` in the supervisor; every thread started
    // from here inherits the mask, and `Command` clears it for children.
    let signals = supervised_signals();
    signals.thread_block().map_err(|source| InitError::Sys {
        what: "block signals",
        source,
    })?;

    let boot = system::partition(1, Duration::from_secs(10))?;
    if let Err(err) = system::mount_fs(
        &boot.to_string_lossy(),
        "/boot",
        "vfat",
        MsFlags::MS_RDONLY | BOOT_FLAGS,
        Some("codepage=437,iocharset=ascii"),
    ) {
        eprintln!("moat init: boot partition: {err}; no first-boot settings");
    }
    // Removed first, so the reset happens once; none if it cannot be.
    let reset_asked = Path::new(RESET_FILE).exists() && on_boot_partition(&[(RESET_FILE, None)]);
    // Before the data partition, which a first boot formats with the time.
    clock_floor();
    mount_data(reset_asked)?;

    let settings = settings();
    let _ = nix::unistd::sethostname(&settings.name);
    fs::create_dir_all(firstboot::DAEMON_DATA_DIR).map_err(|source| InitError::Io {
        what: firstboot::DAEMON_DATA_DIR.into(),
        source,
    })?;
    system::write_atomic(Path::new(DAEMON_CONFIG), settings.daemon_config.as_bytes())?;
    first_contact(&settings);

    net::loopback_up()?;
    start_network(&settings);

    let mut daemon = Supervised::default();
    daemon.start();
    if let Some(join) = settings.join.clone()
        && !Path::new(JOINED_MARK).exists()
    {
        std::thread::spawn(move || pair(&join));
    }
    supervise(&signals, &mut daemon)
}

fn supervised_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPWR,
        Signal::SIGALRM,
    ] {
        set.add(signal);
    }
    set
}

/// Mounts the data partition, first making its file system if it is blank
/// (images ship it so, to be formatted at its real size). If it does
/// not mount, the appliance still runs, on a RAM disk that forgets at power
/// off: a partition holding anything else is never formatted. A factory
/// reset (`reset`, or asked by the control plane in `/data`) blanks it
/// first, so nothing but the image is kept.
fn mount_data(reset: bool) -> Result<(), InitError> {
    let data = system::partition(4, Duration::from_secs(10))?;
    if reset {
        factory_reset(&data, RESET_FILE);
    }
    format_and_mount(&data)?;
    let asked = Path::new(firstboot::DAEMON_DATA_DIR).join(crate::store::files::FACTORY_RESET);
    if asked.exists() {
        if let Err(err) = nix::mount::umount("/data") {
            eprintln!("moat init: factory reset: cannot unmount /data: {err}; nothing wiped");
            let _ = fs::remove_file(&asked);
            return Ok(());
        }
        factory_reset(&data, "the control plane");
        format_and_mount(&data)?;
    }
    Ok(())
}

/// Blanks the data partition, saying who asked.
fn factory_reset(data: &Path, asked_by: &str) {
    let blanked = File::options()
        .write(true)
        .open(data)
        .map_err(Box::<dyn Error>::from)
        .and_then(|device| Ok(moat_mkfs::blank(&device)?));
    match blanked {
        Ok(()) => eprintln!("moat init: factory reset (asked by {asked_by}): /data wiped"),
        Err(err) => eprintln!("moat init: factory reset (asked by {asked_by}) failed: {err}"),
    }
}

fn format_and_mount(data: &Path) -> Result<(), InitError> {
    match format_if_blank(data) {
        Ok(Some(layout)) => eprintln!(
            "moat init: data partition {} was blank: formatted ext4, {} MiB",
            data.display(),
            layout.bytes() >> 20
        ),
        Ok(None) => {}
        Err(err) => eprintln!("moat init: data partition {}: {err}", data.display()),
    }
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
    match system::mount_fs(&data.to_string_lossy(), "/data", "ext4", flags, None) {
        Ok(()) => eprintln!("moat init: data partition {} on /data", data.display()),
        Err(err) => {
            eprintln!("moat init: data partition: {err}; /data is in RAM and will not persist");
            system::mount_fs("tmpfs", "/data", "tmpfs", flags, Some("mode=0755,size=64m"))?;
        }
    }
    Ok(())
}

/// Makes an ext4 file system on `device` if it is blank, with a random
/// (version 4) UUID and hash seed.
fn format_if_blank(device: &Path) -> Result<Option<moat_mkfs::Layout>, Box<dyn Error>> {
    let file = File::options().read(true).write(true).open(device)?;
    if !moat_mkfs::is_blank(&file)? {
        return Ok(None);
    }
    let mut uuid: [u8; 16] = rand::random();
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let params = moat_mkfs::Format {
        uuid,
        hash_seed: rand::random(),
        now: crate::clock::unix_now(),
    };
    Ok(Some(moat_mkfs::format(&file, &params)?))
}

/// A clock that starts at 1970 (no RTC, as on a Pi) would make every
/// certificate and bundle look not yet valid: never run before the image
/// was built.
fn clock_floor() {
    let Some(built) = build_time() else {
        return;
    };
    if crate::clock::unix_now() < built {
        eprintln!("moat init: clock before the image's build time; set to {built}");
        let _ = system::set_clock(built * 1000);
    }
}

/// When the image was built, Unix seconds: the clock's floor.
fn build_time() -> Option<u64> {
    fs::read_to_string(format!("{SLOT_DIR}/build-epoch"))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
}

/// The settings ruling this boot, consuming the boot partition's file on
/// the first one. A file that does not parse is reported and not consumed;
/// the appliance comes up on the defaults so it can be reached.
fn settings() -> Settings {
    let stored = fs::read_to_string(STORED_SETTINGS).ok();
    let boot_file = fs::read_to_string(BOOT_SETTINGS).ok();
    let defaults = || Settings::parse("").expect("the empty settings parse");
    match firstboot::decide(stored.as_deref(), boot_file.as_deref()) {
        Provisioning::Consume(text) => match Settings::parse(text) {
            Ok(settings) => {
                let kept = firstboot::without_admin_password(text);
                let kept = kept.as_deref().unwrap_or(text);
                match system::write_atomic(Path::new(STORED_SETTINGS), kept.as_bytes()) {
                    Ok(()) => eprintln!("moat init: first boot: /boot/moat.toml kept in /data"),
                    Err(err) => eprintln!("moat init: keeping the settings: {err}"),
                }
                settings
            }
            Err(err) => {
                eprintln!("moat init: {err}; running on the defaults");
                defaults()
            }
        },
        Provisioning::Stored(text) => Settings::parse(text).unwrap_or_else(|err| {
            eprintln!("moat init: stored settings: {err}; running on the defaults");
            defaults()
        }),
        Provisioning::Defaults => defaults(),
    }
}

/// What a person needs to reach the control plane the first time, on the
/// console at every boot: the HTTPS certificate's fingerprint and, until an
/// admin password exists, the setup code (also written to the boot
/// partition). A first-boot `admin_password` is stored as its hash and
/// then taken off the boot partition.
fn first_contact(settings: &Settings) {
    let data = match crate::store::DataDir::open(Path::new(firstboot::DAEMON_DATA_DIR)) {
        Ok(data) => data,
        Err(err) => return eprintln!("moat init: {err}"),
    };
    if let Some(password) = &settings.admin_password {
        match crate::control::set_password_offline(&data, &password.0) {
            Ok(true) => {
                eprintln!("moat init: admin password from moat.toml set (only its hash is kept)")
            }
            Ok(false) => {}
            Err(err) => eprintln!("moat init: admin_password in moat.toml: {err}"),
        }
    }
    let code = crate::control::setup_code(&data).unwrap_or_else(|err| {
        eprintln!("moat init: setup code: {err}");
        None
    });
    let mut writes = Vec::new();
    match code {
        Some(code) => {
            let url = format!("https://{}.local/", settings.name);
            for line in [
                format!("no admin password yet: setup code {code}"),
                format!("open {url} (or this appliance's address) and type it"),
            ] {
                eprintln!("moat init: {line}");
            }
            let note = format!(
                "Moat setup code: {code}\nOpen {url} (or the appliance's address) and type it \
                 to set the admin password.\n"
            );
            writes.push((BOOT_SETUP_CODE, Some(note)));
        }
        None => {
            if Path::new(BOOT_SETUP_CODE).exists() {
                writes.push((BOOT_SETUP_CODE, None));
            }
            // Only once its hash is kept: a failure above keeps the line.
            let boot = fs::read_to_string(BOOT_SETTINGS).unwrap_or_default();
            if let Some(redacted) = firstboot::without_admin_password(&boot) {
                eprintln!("moat init: admin_password removed from {BOOT_SETTINGS}");
                writes.push((BOOT_SETTINGS, Some(redacted)));
            }
        }
    }
    on_boot_partition(&writes);
    https_fingerprint(settings, &data);
}

/// Prints the HTTPS certificate's fingerprint (making the certificate on
/// the first boot) as browsers show it, `AB:CD:…`.
fn https_fingerprint(settings: &Settings, data: &crate::store::DataDir) {
    let config = match crate::config::Config::parse(&settings.daemon_config, DAEMON_CONFIG) {
        Ok(config) if config.instance.https.is_some() => config,
        _ => return,
    };
    match crate::control::HttpsIdentity::load(&config.instance, data) {
        Ok(identity) => {
            let colons: Vec<String> = identity
                .fingerprint
                .as_bytes()
                .iter()
                .map(|byte| format!("{byte:02X}"))
                .collect();
            eprintln!(
                "moat init: HTTPS certificate SHA-256 fingerprint (compare with your browser's):"
            );
            eprintln!("moat init:   {}", colons.join(":"));
        }
        Err(err) => eprintln!("moat init: HTTPS certificate: {err}"),
    }
}

/// Writes (or, for `None`, removes) files on the boot partition, which is
/// mounted read-only: remounted writable for them, then read-only again.
/// True when every one was done.
fn on_boot_partition(writes: &[(&str, Option<String>)]) -> bool {
    if writes.is_empty() {
        return true;
    }
    let remount = |flags: MsFlags| {
        let flags = MsFlags::MS_REMOUNT | BOOT_FLAGS | flags;
        nix::mount::mount(None::<&str>, "/boot", None::<&str>, flags, None::<&str>)
    };
    if let Err(err) = remount(MsFlags::empty()) {
        eprintln!("moat init: boot partition: remount read-write: {err}");
        return false;
    }
    let mut all_done = true;
    for (path, contents) in writes {
        let done = match contents {
            Some(text) => fs::write(path, text),
            None => fs::remove_file(path),
        };
        if let Err(err) = done {
            eprintln!("moat init: {path}: {err}");
            all_done = false;
        }
    }
    nix::unistd::sync();
    if let Err(err) = remount(MsFlags::MS_RDONLY) {
        eprintln!("moat init: boot partition: remount read-only: {err}");
    }
    all_done
}

/// Brings the network up in the background (DHCP waits on servers; the
/// daemon can bind meanwhile), then keeps the clock set.
fn start_network(settings: &Settings) {
    let network = settings.network.clone();
    let hostname = settings.name.clone();
    let ntp = settings.ntp.clone();
    let (bound_tx, bound_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let iface = match net::ethernet(Duration::from_secs(30)) {
            Ok(iface) => iface,
            Err(err) => {
                eprintln!("moat init: {err}");
                return;
            }
        };
        match network {
            Network::Dhcp => {
                if let Err(err) = net::run_dhcp(&iface, &hostname, &bound_tx) {
                    eprintln!("moat init: DHCP stopped: {err}");
                }
            }
            Network::Static {
                address,
                prefix_len,
                gateway,
            } => match net::configure(&iface, address, prefix_len, gateway) {
                Ok(()) => {
                    eprintln!(
                        "moat init: {} is {address}/{prefix_len} (static)",
                        iface.name
                    );
                    let _ = bound_tx.send(dhcp::Lease {
                        address,
                        prefix_len,
                        gateway,
                        dns: Vec::new(),
                        server: address,
                        duration: Duration::MAX,
                        renew_after: Duration::MAX,
                    });
                }
                Err(err) => eprintln!("moat init: static address: {err}"),
            },
        }
    });
    std::thread::spawn(move || {
        // Wait for an address, then keep the clock: retry every minute
        // until it is set, then every six hours.
        if bound_rx.recv().is_err() || ntp.is_empty() {
            return;
        }
        let guard = sntp::ClockGuard::new(build_time().unwrap_or(0) * 1000);
        loop {
            let pause = if net::sync_clock(&ntp, &guard) {
                6 * 3600
            } else {
                60
            };
            std::thread::sleep(Duration::from_secs(pause));
        }
    });
}

/// The supervised `moat run` and when to start it again.
#[derive(Debug, Default)]
struct Supervised {
    /// The running process and when it started.
    child: Option<(Child, Instant)>,
    restarts: supervisor::Supervisor,
}

impl Supervised {
    /// Starts the daemon in the mode the restart policy says; a failed
    /// spawn is retried after the policy's pause (`SIGALRM`).
    fn start(&mut self) {
        let mode = self.restarts.mode();
        match spawn_daemon(mode) {
            Ok(child) => {
                let pid = child.id();
                eprintln!("moat init: daemon started (pid {pid}, {mode:?} mode)");
                std::thread::spawn(move || report_rss(pid));
                self.child = Some((child, crate::clock::now()));
            }
            Err(err) => {
                eprintln!("moat init: starting the daemon: {err}");
                let restart = self.restarts.spawn_failed();
                schedule(restart);
            }
        }
    }

    /// The daemon ended: schedules its next start.
    fn ended(&mut self) {
        let Some((_, started)) = self.child.take() else {
            return;
        };
        let restart = self.restarts.exited(started, crate::clock::now());
        schedule(restart);
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|(child, _)| child.id() as i32)
    }
}

/// Asks for a `SIGALRM` when the daemon is due to start again.
fn schedule(restart: supervisor::Restart) {
    let secs = u32::try_from(restart.after.as_secs()).unwrap_or(u32::MAX);
    eprintln!(
        "moat init: starting the daemon again in {secs} s ({:?} mode)",
        restart.mode
    );
    nix::unistd::alarm::set(secs.max(1));
}

fn spawn_daemon(mode: supervisor::Mode) -> std::io::Result<Child> {
    let mut command = Command::new(format!("{SLOT_DIR}/moat"));
    command.args(["run", "--config", DAEMON_CONFIG]);
    if mode == supervisor::Mode::Safe {
        command.arg(format!(
            "--safe-mode=started by init: {}",
            supervisor::Supervisor::safe_mode_reason()
        ));
    }
    command
        .env_remove(STAGE_VAR)
        .env(SUPERVISED_VAR, "1")
        .current_dir("/data")
        .spawn()
}

/// A replica pairs with its primary once, retrying until it works.
fn pair(join: &firstboot::Join) {
    for attempt in 1..=60 {
        std::thread::sleep(Duration::from_secs(5));
        let status = run_to_end(
            Command::new(format!("{SLOT_DIR}/moat"))
                .args(["join", &join.primary, &join.code, "--config", DAEMON_CONFIG])
                .env_remove(STAGE_VAR),
        );
        match status {
            Ok(WaitStatus::Exited(_, 0)) => {
                let _ = system::write_atomic(Path::new(JOINED_MARK), b"");
                eprintln!("moat init: paired with {}", join.primary);
                return;
            }
            other => eprintln!("moat init: pairing attempt {attempt}: {other:?}"),
        }
    }
}

/// Starts `command` and waits for its end, like `Command::status`, but
/// with the status the supervisor reaped.
fn run_to_end(command: &mut Command) -> std::io::Result<WaitStatus> {
    let (sender, status) = mpsc::channel();
    {
        // Held across the spawn: `reap` cannot look the PID up before it is in.
        let mut waiters = WAITERS.lock().unwrap_or_else(PoisonError::into_inner);
        let child = command.spawn()?;
        waiters.insert(child.id() as i32, sender);
    }
    status
        .recv()
        .map_err(|_| std::io::Error::other("init stopped reaping"))
}

/// Reports the daemon's resident memory on the console now and then.
fn report_rss(pid: u32) {
    for pause in [10, 60, 600].into_iter().chain(std::iter::repeat(3600)) {
        std::thread::sleep(Duration::from_secs(pause));
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            return;
        };
        if let Some(rss) = status.lines().find(|line| line.starts_with("VmRSS:")) {
            let kb = rss.trim_start_matches("VmRSS:").trim();
            eprintln!("moat init: daemon rss {kb}");
        }
    }
}

/// Waits for signals: reaps children, restarts the daemon when due,
/// forwards a reload, shuts down.
fn supervise(signals: &SigSet, daemon: &mut Supervised) -> ! {
    loop {
        let signal = match signals.wait() {
            Ok(signal) => signal,
            Err(err) => {
                eprintln!("moat init: sigwait: {err}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        match signal {
            Signal::SIGCHLD => {
                if reap(daemon.pid()) {
                    daemon.ended();
                }
            }
            Signal::SIGALRM => {
                if daemon.child.is_none() {
                    daemon.start();
                }
            }
            Signal::SIGHUP => {
                if let Some(pid) = daemon.pid() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGHUP);
                }
            }
            // busybox's convention: USR1 halt, USR2 and PWR power off, TERM
            // and INT (Ctrl-Alt-Del) reboot.
            Signal::SIGUSR1 | Signal::SIGUSR2 | Signal::SIGPWR => {
                shut_down(daemon, RebootMode::RB_POWER_OFF)
            }
            _ => shut_down(daemon, RebootMode::RB_AUTOBOOT),
        }
    }
}

/// Reaps every exited child, handing a waited-for one's status to its
/// waiter; true if the daemon (`daemon_pid`) was one of them.
fn reap(daemon_pid: Option<i32>) -> bool {
    let mut daemon_exited = false;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return daemon_exited,
            Ok(status) => {
                let pid = status.pid().map(Pid::as_raw);
                if pid.is_some() && pid == daemon_pid {
                    eprintln!("moat init: daemon ended ({status:?})");
                    daemon_exited = true;
                } else if let Some(waiter) = pid.and_then(|pid| {
                    WAITERS
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&pid)
                }) {
                    let _ = waiter.send(status);
                }
            }
        }
    }
}

fn shut_down(daemon: &mut Supervised, mode: RebootMode) -> ! {
    eprintln!("moat init: shutting down");
    nix::unistd::alarm::cancel();
    if let Some(pid) = daemon.pid() {
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = crate::clock::now() + Duration::from_secs(10);
        while crate::clock::now() < deadline {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(100)),
                _ => break,
            }
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
    nix::unistd::sync();
    let _ = nix::mount::umount2("/data", nix::mount::MntFlags::MNT_DETACH);
    nix::unistd::sync();
    let _ = reboot(mode);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
