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
    promtool:prometheus chromium:chromium chromedriver:chromium-driver; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || need_packages+=("${tool##*:}")
done
if [ "${#need_packages[@]}" -gt 0 ]; then
    echo "installing: ${need_packages[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_packages[@]}"
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# One feature set for the binary, the tests and the benchmark: build once.
cargo build --workspace --release --locked
cargo test --workspace --release --locked

if [ "${MOAT_FUZZ_SECONDS:-0}" -gt 0 ]; then
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
    # cargo-fuzz needs nightly flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
    RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none request_path -- \
        -max_total_time="$MOAT_FUZZ_SECONDS" -rss_limit_mb=2048
fi

# The benchmark, small: proves the harness and every peer still run.
MOAT_BENCH_SMOKE=1 benches/dnsperf.sh
MOAT_BENCH_SMOKE=1 cargo bench --workspace --locked --bench fleet
