#!/usr/bin/env bash
# Runs every test. Installs what the tests need first when it is missing:
# Debian packages (the benchmark peers and load generator, and the headless
# Chromium and chromedriver the web UI's browser tests drive) and the
# wasm32-unknown-unknown target the policy plugins are built for.
#
# MOAT_FUZZ_SECONDS=N also runs the cargo-fuzz target of the request path
# for N seconds (installing cargo-fuzz if needed); CI runs the same property
# over 50,000 generated inputs as a unit test instead, to stay fast.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
for tool in dnsperf:dnsperf unbound:unbound dnsmasq:dnsmasq-base taskset:util-linux dig:dnsutils \
    promtool:prometheus chromium:chromium chromedriver:chromium-driver \
    qemu-system-x86_64:qemu-system-x86 qemu-system-aarch64:qemu-system-arm mksquashfs:squashfs-tools \
    mcopy:mtools mkfs.fat:dosfstools sfdisk:fdisk mkfs.ext4:e2fsprogs xz:xz-utils ip:iproute2 \
    cpio:cpio depmod:kmod file:file openssl:openssl xxd:xxd musl-gcc:musl-tools aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu \
    /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf /usr/share/qemu-efi-aarch64/QEMU_EFI.fd:qemu-efi-aarch64 \
    /usr/aarch64-linux-gnu/include/stdio.h:libc6-dev-arm64-cross; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || [ -e "${tool%%:*}" ] ||
        need_packages+=("${tool##*:}")
done
if [ "${#need_packages[@]}" -gt 0 ]; then
    echo "installing: ${need_packages[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_packages[@]}"
fi
for target in wasm32-unknown-unknown x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done

# The sync and pairing protocols (appliance/proto) build for a target without
# sockets, clocks or OS randomness: proof that the crate does no I/O.
cargo build -p moat-proto --target wasm32-unknown-unknown --locked

# The example plugins' own tests, on the host (their decisions are pure).
cargo test --manifest-path plugins/Cargo.toml --locked --lib -p moat-schedule -p moat-kiosk

# Everything runs on the static musl build that the x86_64 image ships, so CI
# compiles the x86_64 side once: the tests, the benchmark and the image all
# use the same `moat`. Nested cargo runs (tests/system's harness, the
# benchmark) inherit the target.
export CARGO_BUILD_TARGET=x86_64-unknown-linux-musl
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/$CARGO_BUILD_TARGET/release"
cargo build --workspace --release --locked

# The images the boot tests (tests/boot) start in QEMU. The x86_64 one holds
# the binary just built. The arm64 one is cross-built in the background, at
# the lowest priority, with the image-test profile (see Cargo.toml): it takes
# the CPU the x86_64 tests leave idle, and is waited for before the boot tests.
export MOAT_IMAGE_DIR="${CARGO_TARGET_DIR:-$PWD/target}/images"
MOAT_BINARY="$bin_dir/moat" MOAT_IMAGE_XZ=0 MOAT_IMAGE_OUT="$MOAT_IMAGE_DIR" image/build x86_64
arm64_log="$MOAT_IMAGE_DIR/rpi-arm64.build.log"
MOAT_PROFILE=image-test MOAT_IMAGE_XZ=0 MOAT_IMAGE_OUT="$MOAT_IMAGE_DIR" \
    setsid nice -n 19 image/build rpi-arm64 >"$arm64_log" 2>&1 &
arm64_build=$!
# setsid made it a process group of its own: on failure, end it and its cargo.
trap 'kill -- "-$arm64_build" 2>/dev/null || true' EXIT

cargo test --workspace --release --locked --lib --bins --test system

if [ "${MOAT_FUZZ_SECONDS:-0}" -gt 0 ]; then
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
    # cargo-fuzz needs nightly flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
    RUSTC_BOOTSTRAP=1 env -u CARGO_BUILD_TARGET cargo fuzz run --sanitizer none request_path -- \
        -max_total_time="$MOAT_FUZZ_SECONDS" -rss_limit_mb=2048
fi

# The benchmark, small: proves the harness and every peer still run.
MOAT="$bin_dir/moat" MOAT_BENCH_SMOKE=1 benches/dnsperf.sh
MOAT_BENCH_SMOKE=1 cargo test --workspace --release --locked --bench fleet

if ! wait "$arm64_build"; then
    cat "$arm64_log" >&2
    echo "scripts/test.sh: building the rpi-arm64 image failed (log above)" >&2
    exit 1
fi
grep '^image/build' "$arm64_log"
cargo test --workspace --release --locked --test boot
