#!/usr/bin/env bash
# Runs every test. Installs what the tests need first when it is missing:
# Debian packages (the benchmark peers and load generator) and cargo tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
for tool in dnsperf:dnsperf unbound:unbound dnsmasq:dnsmasq-base taskset:util-linux dig:dnsutils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || need_packages+=("${tool##*:}")
done
if [ "${#need_packages[@]}" -gt 0 ]; then
    echo "installing: ${need_packages[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_packages[@]}"
fi

command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz

cargo build --release --locked -p moat
cargo test --workspace --locked --release
# Fuzz the request path for a while. cargo-fuzz needs nightly flags; the
# stable toolchain accepts them with RUSTC_BOOTSTRAP.
RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none request_path -- \
    -max_total_time="${MOAT_FUZZ_SECONDS:-30}" -rss_limit_mb=2048
# The benchmark, small: proves the harness and every peer still run.
MOAT_BENCH_SMOKE=1 benches/dnsperf.sh
