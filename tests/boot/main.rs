//! Boot tests: the real images from `image/build`, with Debian's kernels,
//! booted in QEMU under software emulation (TCG) inside a network namespace
//! each test makes, answering DNS through QEMU's port forwarding on the
//! namespace's loopback. Nothing leaves the machine: the namespace has only
//! its loopback, and QEMU's user network answers the guest's DHCP itself.
//!
//! The images are built before the tests run (`scripts/test.sh` does it;
//! by hand: `MOAT_IMAGE_XZ=0 image/build x86_64`, likewise `rpi-arm64`).
//! A missing image, QEMU, firmware or `ip` fails the test: none is skipped.
//! Needs root (network namespaces).
//!
//! The replica test runs a primary on the host side too, inside the same
//! namespace, and pairs the booted image with it by the code in its
//! first-boot `moat.toml`.

mod primary;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The first-boot settings the tests put on the boot partition, as a user
/// would after flashing.
const FIRST_BOOT: &str = r#"
[network]
mode = "dhcp"

[instance]
name = "boot-test"

[policy]
upstreams = ["udp://10.0.2.2:5300"]
deny = ["ads.example"]

[[policy.local_records]]
name = "nas.lan"
type = "A"
value = "192.168.1.10"
"#;

/// How long a boot may take to the first answer. Seen: a few seconds to a
/// minute under TCG on two busy cores.
const BOOT_DEADLINE: Duration = Duration::from_secs(420);

/// The guest's ports QEMU forwards from the namespace's loopback: DNS,
/// the control plane (HTTPS and its redirect) and a primary's sync port.
const GUEST_PORTS: [(&str, u16); 5] = [
    ("udp", 53),
    ("tcp", 53),
    ("tcp", 443),
    ("tcp", 80),
    ("udp", 8853),
];

/// How to start one image in QEMU.
struct Machine {
    name: &'static str,
    image: &'static str,
    qemu: &'static str,
    args: Vec<String>,
    /// UEFI variable store to copy for this boot, if the firmware needs one.
    firmware_vars: Option<&'static str>,
}

/// The x86_64 image on a q35 PC with OVMF.
fn x86_64() -> Machine {
    Machine {
        name: "x86_64",
        image: "moat-x86_64.img",
        qemu: "qemu-system-x86_64",
        args: vec![
            "-machine".into(),
            "q35".into(),
            "-smp".into(),
            "1".into(),
            "-drive".into(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                need("/usr/share/OVMF/OVMF_CODE_4M.fd")
            ),
        ],
        firmware_vars: Some("/usr/share/OVMF/OVMF_VARS_4M.fd"),
    }
}

/// The Raspberry Pi image on QEMU's arm64 `virt` board with UEFI (Debian's
/// QEMU has no Pi 4 board; the image carries systemd-boot for this).
fn rpi_arm64() -> Machine {
    Machine {
        name: "rpi-arm64",
        image: "moat-rpi-arm64.img",
        qemu: "qemu-system-aarch64",
        args: vec![
            "-machine".into(),
            "virt".into(),
            "-cpu".into(),
            "cortex-a72".into(),
            "-smp".into(),
            "1".into(),
            "-bios".into(),
            need("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd").into(),
        ],
        firmware_vars: None,
    }
}

fn image_dir() -> PathBuf {
    std::env::var_os("MOAT_IMAGE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("image/out"),
        PathBuf::from,
    )
}

fn need(path: &str) -> &str {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package that has it (scripts/test.sh does)"
    );
    path
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("moat-boot-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self(name);
        run(ns.exec("ip").args(["link", "set", "lo", "up"]));
        ns
    }

    /// Moves the calling thread into the namespace: the sockets it opens
    /// and the processes it starts from then on are inside it.
    fn enter(&self) {
        let path = format!("/run/netns/{}", self.0);
        let file = fs::File::open(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|err| panic!("setns {path}: {err}"));
    }

    fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0, program]);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(status.success(), "{command:?}: {status}");
}

/// An empty directory `name` under the temp dir, whatever was there before.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `dig` at the guest through QEMU's forwarded port 53 in `ns`; its short
/// answer, or `None` on no answer.
fn dig(ns: &Netns, name: &str, tcp: bool) -> Option<String> {
    dig_at(ns, 53, name, tcp)
}

/// `dig` at `127.0.0.1:port` in `ns`; its short answer, or `None`.
fn dig_at(ns: &Netns, port: u16, name: &str, tcp: bool) -> Option<String> {
    let mut command = ns.exec("dig");
    command
        .args(["@127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["+short", "+time=2", "+tries=1", name, "A"]);
    if tcp {
        command.arg("+tcp");
    }
    let output = command
        .stderr(Stdio::null())
        .output()
        .expect("run dig (dnsutils)");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !text.is_empty() && !text.starts_with(";;")).then_some(text)
}

/// A booted image: QEMU in its own network namespace, its serial console
/// in a file, killed by its PID on drop.
struct Vm {
    name: &'static str,
    qemu: Child,
    /// QEMU's program and arguments but the serial console's.
    command: Vec<String>,
    ns: Netns,
    /// The disk.
    image: PathBuf,
    /// This boot's serial console.
    serial: PathBuf,
    boots: u32,
    started: Instant,
    dir: PathBuf,
}

impl Vm {
    /// Copies the image, puts `first_boot` on its boot partition as
    /// `moat.toml` (the user's step after flashing) and boots it in `ns`.
    fn boot(machine: Machine, ns: Netns, first_boot: &str) -> Self {
        let dir = fresh_dir(&ns.0);
        let source = image_dir().join(machine.image);
        assert!(
            source.exists(),
            "{} is missing: build it first (MOAT_IMAGE_XZ=0 image/build {})",
            source.display(),
            machine.name
        );
        let image = dir.join(machine.image);
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&source)
            .arg(&image));
        // The boot partition starts at 1 MiB.
        let settings = dir.join("moat.toml");
        fs::write(&settings, first_boot).unwrap();
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@1M", image.display()))
            .arg(&settings)
            .arg("::moat.toml"));

        let mut command = vec![machine.qemu.to_owned()];
        command.extend(machine.args);
        if let Some(template) = machine.firmware_vars {
            let vars = dir.join("firmware-vars.fd");
            fs::copy(need(template), &vars).unwrap();
            command.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        command.extend(
            [
                "-accel", "tcg", "-m", "1024", "-display", "none", "-monitor", "none",
            ]
            .map(String::from),
        );
        command.extend([
            "-drive".into(),
            format!("file={},format=raw,if=none,id=disk", image.display()),
            "-device".into(),
            "virtio-blk-pci,drive=disk".into(),
            "-netdev".into(),
            format!(
                "user,id=net,{}",
                GUEST_PORTS
                    .map(|(proto, port)| { format!("hostfwd={proto}:127.0.0.1:{port}-:{port}") })
                    .join(",")
            ),
            "-device".into(),
            "virtio-net-pci,netdev=net".into(),
        ]);
        let serial = dir.join("serial-1.log");
        let started = moat::clock::now();
        let qemu = start_qemu(&ns, &command, &serial);
        Self {
            name: machine.name,
            qemu,
            command,
            ns,
            image,
            serial,
            boots: 1,
            started,
            dir,
        }
    }

    /// Cuts the power (kills QEMU) and boots the same disk again.
    fn power_cycle(&mut self) {
        self.power_off();
        self.power_on();
    }

    /// Cuts the power: QEMU is killed, the disk left as it is.
    fn power_off(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }

    /// Boots the disk again after [`Vm::power_off`].
    fn power_on(&mut self) {
        self.boots += 1;
        self.serial = self.dir.join(format!("serial-{}.log", self.boots));
        self.started = moat::clock::now();
        self.qemu = start_qemu(&self.ns, &self.command, &self.serial);
    }

    fn console(&self) -> String {
        fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Polls `check` until it gives a value; fails with the console when
    /// QEMU ends or [`BOOT_DEADLINE`] passes first.
    fn wait_for<T>(&mut self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        loop {
            if let Ok(Some(status)) = self.qemu.try_wait() {
                panic!(
                    "{}: QEMU exited ({status}) before {what}; console:\n{}",
                    self.name,
                    self.console()
                );
            }
            if let Some(value) = check(self) {
                return value;
            }
            assert!(
                self.started.elapsed() < BOOT_DEADLINE,
                "{}: no {what} within {BOOT_DEADLINE:?}; console:\n{}",
                self.name,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn dig(&self, name: &str, tcp: bool) -> Option<String> {
        dig(&self.ns, name, tcp)
    }

    /// The daemon's memory, as init reports it ten seconds after the start.
    fn reported_rss(&self) -> String {
        let deadline = moat::clock::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self
                .console()
                .lines()
                .find(|line| line.contains("daemon rss"))
            {
                return line.trim().to_owned();
            }
            if moat::clock::now() > deadline {
                return "daemon rss not reported".into();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn assert_console(&self, line: &str, what: &str) {
        let log = self.console();
        assert!(log.contains(line), "{}: {what}; console:\n{log}", self.name);
    }
}

fn start_qemu(ns: &Netns, command: &[String], serial: &Path) -> Child {
    ns.exec(&command[0])
        .args(&command[1..])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("start {}: {err}", command[0]))
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Boots `machine` with [`FIRST_BOOT`] and checks it serves that policy.
fn boots_and_answers(machine: Machine) {
    let ns = Netns::new(machine.name);
    let mut vm = Vm::boot(machine, ns, FIRST_BOOT);
    let answer = vm.wait_for("DNS answer", |vm| vm.dig("nas.lan", false));
    let first_answer = vm.started.elapsed();
    assert_eq!(answer, "192.168.1.10", "the local record from moat.toml");
    assert_eq!(
        vm.dig("ads.example", false).as_deref(),
        Some("0.0.0.0"),
        "the denied name is blocked (null answer)"
    );
    assert_eq!(
        vm.dig("nas.lan", true).as_deref(),
        Some("192.168.1.10"),
        "over TCP too"
    );
    vm.assert_console(
        "first boot: /boot/moat.toml kept in /data",
        "init consumed the first-boot settings",
    );
    vm.assert_console("(DHCP from", "the address came from DHCP");
    vm.assert_console(
        "was blank: formatted ext4",
        "init made the file system of the blank data partition",
    );
    vm.assert_console(" on /data", "the data partition is mounted, not RAM");
    println!(
        "boot {}: first answer after {:.1} s; {}",
        vm.name,
        first_answer.as_secs_f64(),
        vm.reported_rss()
    );
}

#[test]
fn x86_64_image_boots_with_uefi_and_answers_dns() {
    boots_and_answers(x86_64());
}

#[test]
fn rpi_arm64_image_boots_with_uefi_on_the_virt_board_and_answers_dns() {
    boots_and_answers(rpi_arm64());
}

/// The primary's sync port inside the namespace (not 8853, which QEMU
/// forwards to the guest's). QEMU's user network shows the namespace's
/// loopback to the guest as 10.0.2.2.
const PRIMARY_SYNC_PORT: u16 = 8854;

/// A primary on the host side: `moat run` inside the VM's namespace, so
/// its ports are private to the test. Killed by its PID on drop.
struct HostPrimary {
    child: Child,
    config: PathBuf,
    dir: PathBuf,
}

impl HostPrimary {
    fn start(ns: &Netns) -> Self {
        let dir = fresh_dir(&format!("{}-primary", ns.0));
        let config = dir.join("moat.toml");
        fs::write(
            &config,
            format!(
                r#"[instance]
name = "hq"
listen = ["127.0.0.1:5353"]
control = "127.0.0.1:8080"
sync = "127.0.0.1:{PRIMARY_SYNC_PORT}"
data_dir = "{}"

[policy]
upstreams = ["udp://127.0.0.1:5300"]
deny = ["tracker.example"]

[[policy.local_records]]
name = "printer.lan"
type = "A"
value = "192.168.1.9"
"#,
                dir.join("data").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("moat.log")).unwrap();
        let child = ns
            .exec(moat_binary())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the primary");
        Self { child, config, dir }
    }

    /// `moat ARGS --config CONFIG` in the namespace, where the control port is.
    fn cli(&self, ns: &Netns, args: &[&str]) -> std::process::Output {
        ns.exec(moat_binary())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run the moat CLI")
    }

    /// A pairing code, once the primary is up (it may still be starting).
    fn pairing_code(&self, ns: &Netns) -> String {
        for _ in 0..100 {
            let output = self.cli(ns, &["code", "--valid", "30m"]);
            let stdout = String::from_utf8_lossy(&output.stdout);
            if output.status.success()
                && let Some(code) = stdout.split_whitespace().next()
            {
                return code.to_owned();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the primary issued no pairing code in 20 s; log:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("moat.log")).unwrap_or_default()
    }
}

impl Drop for HostPrimary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn moat_binary() -> &'static str {
    moat_system_tests::moat::binary()
        .to_str()
        .expect("a UTF-8 path to the moat binary")
}

/// A replica image pairs, on its first boot, with a primary on the host
/// through the code in its `moat.toml`, then serves the primary's policy.
#[test]
fn x86_64_replica_image_pairs_with_a_primary_on_the_host() {
    let ns = Netns::new("replica");
    let primary = HostPrimary::start(&ns);
    let code = primary.pairing_code(&ns);
    let first_boot = format!(
        r#"
[network]
mode = "dhcp"

[join]
primary = "10.0.2.2:{PRIMARY_SYNC_PORT}"
code = "{code}"

[instance]
name = "boot-replica"

[policy]
upstreams = ["udp://10.0.2.2:5300"]
"#
    );
    let mut vm = Vm::boot(x86_64(), ns, &first_boot);
    let answer = vm.wait_for("answer from the primary's policy", |vm| {
        vm.dig("printer.lan", false)
    });
    let synced = vm.started.elapsed();
    assert_eq!(answer, "192.168.1.9", "the primary's local record");
    assert_eq!(
        vm.dig("tracker.example", false).as_deref(),
        Some("0.0.0.0"),
        "the primary's denied name is blocked"
    );
    vm.assert_console(
        &format!("paired with 10.0.2.2:{PRIMARY_SYNC_PORT}"),
        "init paired the replica",
    );
    let entry = vm.wait_for("the replica listed active on the primary", |vm| {
        let output = primary.cli(&vm.ns, &["replicas", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).ok()?;
        list.into_iter()
            .find(|entry| entry["name"] == "boot-replica" && entry["status"] == "active")
    });
    assert!(
        entry["bundle_version"]
            .as_u64()
            .is_some_and(|version| version >= 1),
        "the replica runs a bundle from the primary: {entry}"
    );

    // Power cut: the replica comes back on what /data kept (its pairing,
    // its identity, the primary's bundle) and pairs no second time.
    vm.power_cycle();
    let answer = vm.wait_for("answer after the power cut", |vm| {
        vm.dig("printer.lan", false)
    });
    let after_power_cut = vm.started.elapsed();
    assert_eq!(answer, "192.168.1.9", "the primary's policy, kept in /data");
    let console = vm.console();
    assert!(
        console.contains(" on /data")
            && !console.contains("was blank")
            && !console.contains("pairing attempt")
            && !console.contains("paired with"),
        "second boot: /data mounted as it was, no new file system, no second pairing; console:\n{console}"
    );
    println!(
        "boot {} replica: serving the primary's policy {:.1} s after start, {:.1} s after a power cut",
        vm.name,
        synced.as_secs_f64(),
        after_power_cut.as_secs_f64()
    );

    // A forgotten password: the documented file on the boot partition
    // wipes /data at the next boot, once, and the appliance starts over
    // from its first-boot settings, as freshly flashed.
    vm.power_off();
    let boot_partition = format!("{}@@1M", vm.image.display());
    let reset_file = vm.dir.join("moat-factory-reset");
    fs::write(&reset_file, "").unwrap();
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&boot_partition)
        .arg(&reset_file)
        .arg("::moat-factory-reset"));
    vm.power_on();
    vm.wait_for("the first-boot settings read again after the reset", |vm| {
        vm.console()
            .contains("first boot: /boot/moat.toml kept in /data")
            .then_some(())
    });
    let console = vm.console();
    assert!(
        console.contains("factory reset (asked by /boot/moat-factory-reset): /data wiped")
            && console.contains("was blank: formatted ext4"),
        "the reset wiped and formatted /data; console:\n{console}"
    );
    vm.power_off();
    let listing = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(&boot_partition)
        .arg("::")
        .output()
        .expect("run mdir (mtools)");
    let listing = String::from_utf8_lossy(&listing.stdout).to_lowercase();
    assert!(
        listing.contains("moat.toml") && !listing.contains("moat-factory-reset"),
        "init removed the reset file and kept the settings: {listing}"
    );
}

/// Offline, `image/build` stops at the package lists and says so, and marks
/// nothing updated: the next build with the network back fetches them.
#[test]
fn an_offline_image_build_fails_at_the_package_lists_and_marks_nothing_updated() {
    let ns = Netns::new("offline-build");
    let cache = fresh_dir("moat-boot-offline-build-cache");
    let out = fresh_dir("moat-boot-offline-build-out");
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("image/build");
    for attempt in ["first", "second"] {
        let output = ns
            .exec(build.to_str().expect("a UTF-8 path"))
            .arg("x86_64")
            .env("MOAT_BINARY", moat_binary())
            .env("MOAT_IMAGE_CACHE", &cache)
            .env("MOAT_IMAGE_OUT", &out)
            .env("MOAT_IMAGE_XZ", "0")
            .output()
            .expect("image/build runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{attempt} offline build succeeded: {stderr}"
        );
        assert!(
            stderr.contains("updating the package lists from deb.debian.org failed"),
            "{attempt} offline build did not say why it failed: {stderr}"
        );
        assert!(
            !cache.join("apt/updated").exists(),
            "{attempt} offline build marked its package lists updated"
        );
    }
    assert!(
        !out.join("moat-x86_64.img").exists(),
        "an image was written offline"
    );
    let _ = fs::remove_dir_all(&cache);
    let _ = fs::remove_dir_all(&out);
}
