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

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

struct Machine {
    name: &'static str,
    image: &'static str,
    qemu: &'static str,
    args: Vec<String>,
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

/// QEMU, killed by its PID on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(status.success(), "{command:?}: {status}");
}

/// `dig` inside the namespace; its short answer, or `None` on no answer.
fn dig(ns: &Netns, name: &str, tcp: bool) -> Option<String> {
    let mut command = ns.exec("dig");
    command.args([
        "@127.0.0.1",
        "-p",
        "53",
        "+short",
        "+time=2",
        "+tries=1",
        name,
        "A",
    ]);
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

fn boot(machine: Machine) {
    let dir = tempdir(machine.name);
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
    // The user's step after flashing: moat.toml on the boot partition (at 1 MiB).
    let settings = dir.join("moat.toml");
    fs::write(&settings, FIRST_BOOT).unwrap();
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@1M", image.display()))
        .arg(&settings)
        .arg("::moat.toml"));

    let ns = Netns::new(machine.name);
    let serial = dir.join("serial.log");
    let mut command = ns.exec(machine.qemu);
    command
        .args(&machine.args)
        .args([
            "-accel", "tcg", "-m", "1024", "-display", "none", "-monitor", "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=disk",
            image.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=disk"])
        .args([
            "-netdev",
            "user,id=net,hostfwd=udp:127.0.0.1:53-:53,hostfwd=tcp:127.0.0.1:53-:53",
            "-device",
            "virtio-net-pci,netdev=net",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let started = moat::clock::now();
    let mut qemu = Qemu(
        command
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", machine.qemu)),
    );
    let console = || fs::read_to_string(&serial).unwrap_or_default();

    let answer = loop {
        if let Ok(Some(status)) = qemu.0.try_wait() {
            panic!(
                "{} exited ({status}) before answering:\n{}",
                machine.qemu,
                console()
            );
        }
        if let Some(answer) = dig(&ns, "nas.lan", false) {
            break answer;
        }
        if started.elapsed() > BOOT_DEADLINE {
            panic!(
                "{} gave no DNS answer within {BOOT_DEADLINE:?}; console:\n{}",
                machine.name,
                console()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let first_answer = started.elapsed();
    assert_eq!(answer, "192.168.1.10", "the local record from moat.toml");
    assert_eq!(
        dig(&ns, "ads.example", false).as_deref(),
        Some("0.0.0.0"),
        "the denied name is blocked (null answer)"
    );
    assert_eq!(
        dig(&ns, "nas.lan", true).as_deref(),
        Some("192.168.1.10"),
        "over TCP too"
    );
    let log = console();
    assert!(
        log.contains("first boot: /boot/moat.toml kept in /data"),
        "init consumed the first-boot settings:\n{log}"
    );
    assert!(
        log.contains("(DHCP from"),
        "the address came from DHCP:\n{log}"
    );
    // The daemon's memory, as init reports it ten seconds after the start.
    let deadline = moat::clock::now() + Duration::from_secs(60);
    let rss = loop {
        if let Some(line) = console().lines().find(|line| line.contains("daemon rss")) {
            break line.trim().to_owned();
        }
        if moat::clock::now() > deadline {
            break "daemon rss not reported".into();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "boot {}: first answer after {:.1} s; {rss}",
        machine.name,
        first_answer.as_secs_f64()
    );
    drop(qemu);
    let _ = fs::remove_dir_all(&dir);
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moat-boot-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn x86_64_image_boots_with_uefi_and_answers_dns() {
    let dir = tempdir("x86_64-vars");
    let vars = dir.join("OVMF_VARS.fd");
    fs::copy(need("/usr/share/OVMF/OVMF_VARS_4M.fd"), &vars).unwrap();
    boot(Machine {
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
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ],
    });
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn rpi_arm64_image_boots_with_uefi_on_the_virt_board_and_answers_dns() {
    boot(Machine {
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
    });
}
