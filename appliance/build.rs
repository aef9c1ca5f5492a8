//! Builds the WASM policy plugins in `plugins/` for wasm32-unknown-unknown
//! and leaves the modules in OUT_DIR, so a plain `cargo build` embeds them.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
const PLUGINS: [&str; 4] = [
    "moat_blocklist",
    "moat_local_records",
    "moat_schedule",
    "moat_kiosk",
];

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    println!("cargo:rerun-if-changed={}", plugins.display());
    ensure_target();
    let target_dir = out_dir.join("plugins-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The host build's flags (coverage, sanitizers, linkers) are not the guests'.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS",
            "-C link-arg=-zstack-size=65536",
        )
        .status()
        .expect("run cargo to build the WASM plugins");
    assert!(
        status.success(),
        "building the WASM plugins in {} failed",
        plugins.display()
    );
    for plugin in PLUGINS {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{plugin}.wasm"));
        std::fs::copy(&built, out_dir.join(format!("{plugin}.wasm")))
            .unwrap_or_else(|err| panic!("copy {}: {err}", built.display()));
    }
}

/// Installs the wasm32 target with rustup when it is missing, so a plain
/// `cargo build` works on a fresh machine.
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(output)
            if String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.trim() == TARGET) => {}
        Ok(_) => {
            println!("cargo:warning=installing the {TARGET} target with rustup");
            let status = Command::new("rustup")
                .args(["target", "add", TARGET])
                .status();
            assert!(
                status.is_ok_and(|status| status.success()),
                "the {TARGET} target is missing and `rustup target add {TARGET}` failed"
            );
        }
        Err(_) => {
            println!("cargo:warning=rustup not found; assuming the {TARGET} target is installed")
        }
    }
}
