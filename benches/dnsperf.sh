#!/usr/bin/env bash
# Cache-hit benchmark: Moat against unbound and dnsmasq, in the same run.
#
# Every server forwards to the same local upstream (a dnsmasq answering every
# *.bench.test name with a one-hour TTL), runs pinned to CPU 0, and is driven
# by dnsperf pinned to CPU 1. Each server's cache is warmed with one full pass
# over the names (answers verified) so that every measured query is a cache
# hit; the upstream's query counter proves it. Rounds are interleaved (each
# round starts every server afresh, in rotated order). Per server it reports:
#   - max qps: dnsperf with no rate limit for a fixed time;
#   - p50/p99 latency at a fixed moderate rate, computed from dnsperf -v
#     per-query output (dnsperf 2.10 prints no percentiles);
#   - idle RSS (after start and warm-up) and RSS after load;
#   - server CPU time (user+system) per answered query in the max-qps run,
#     and how busy the server and dnsperf were (near 100% = saturated).
# Figures are medians over rounds; ratios are server/moat. The markdown table
# is printed and saved under bench-results/.
#
# Run:  benches/dnsperf.sh                     full: 3 rounds, 10k names, ~3 min
#       MOAT_BENCH_SMOKE=1 benches/dnsperf.sh  smoke (CI): 1 round, 1k names, ~10 s
# Needs: dnsperf, unbound, dnsmasq, taskset, dig, python3, two CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "dnsperf.sh: error: $*" >&2; exit 1; }

if [ "${MOAT_BENCH_SMOKE:-0}" = 1 ]; then
    MODE=smoke ROUNDS=1 NAMES=1000 QPS_SECONDS=1 LAT_SECONDS=1
else
    MODE=full ROUNDS=3 NAMES=10000 QPS_SECONDS=10 LAT_SECONDS=5
fi
LAT_QPS=20000        # the fixed rate of the latency run
WARM_QPS=5000        # gentle enough that no forwarded query is dropped
CLIENTS=4            # dnsperf sockets of the max-qps run ...
OUTSTANDING=128      # ... and queries in flight. More overflows a server's
                     # default socket buffer (rmem_default) at start; each drop
                     # then holds a slot until the timeout, lowering the load.
SERVER_CPU=0
CLIENT_CPU=1
MIN_TTL=3600         # the upstream TTL must outlast the whole run
SERVERS=(moat unbound dnsmasq)

. benches/lib.sh
bench_init

read -r UP_PORT MOAT_PORT UNBOUND_PORT DNSMASQ_PORT < <(free_ports 4)
[ -n "${DNSMASQ_PORT:-}" ] || die "could not find four free loopback ports"
declare -A PORT=([moat]=$MOAT_PORT [unbound]=$UNBOUND_PORT [dnsmasq]=$DNSMASQ_PORT)

NAMES_FILE=$WORK/names.txt
for i in $(seq 1 "$NAMES"); do printf 'n%05d.bench.test A\n' "$i"; done > "$NAMES_FILE"
LAST_NAME=$(printf 'n%05d.bench.test' "$NAMES")

start_moat() {
    local dir=$WORK/moat
    rm -rf "$dir"; mkdir -p "$dir/data"
    cat >"$dir/moat.toml" <<EOF
[instance]
name = "bench"
listen = ["127.0.0.1:$MOAT_PORT"]
control = "127.0.0.1:0"
data_dir = "$dir/data"

[policy]
upstreams = ["udp://127.0.0.1:$UP_PORT"]

[tuning.cache]
max_ttl = "1d"
EOF
    "$TASKSET" -c "$SERVER_CPU" "$MOAT" run --config "$dir/moat.toml" >>"$WORK/moat.log" 2>&1 &
    PID[moat]=$!
}

start_unbound() {
    local dir=$WORK/unbound
    rm -rf "$dir"; mkdir -p "$dir"
    write_unbound_conf "$dir/unbound.conf" "$UNBOUND_PORT" "$dir"
    "$TASKSET" -c "$SERVER_CPU" "$UNBOUND" -d -c "$dir/unbound.conf" >>"$WORK/unbound.log" 2>&1 &
    PID[unbound]=$!
}

start_dnsmasq() {
    # dnsmasq 2.90 accepts more than 10000 (it only warns); twice the names
    # leaves room so nothing warmed is evicted.
    "$TASKSET" -c "$SERVER_CPU" "$DNSMASQ" --no-daemon --no-resolv --no-hosts \
        --port="$DNSMASQ_PORT" --listen-address=127.0.0.1 --bind-interfaces \
        --server="127.0.0.1#$UP_PORT" --cache-size=$((NAMES * 2)) \
        >>"$WORK/dnsmasq.log" 2>&1 &
    PID[dnsmasq]=$!
}

# Waits until the server on $2 answers a bench.test name with 192.0.2.1.
wait_ready() {
    local name=$1 port=$2 i
    for i in $(seq 100); do
        kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited during start-up"
        if [ "$("$DIG" @127.0.0.1 -p "$port" +short +tries=1 +time=1 n00001.bench.test A)" = 192.0.2.1 ]; then
            return 0
        fi
        sleep 0.1
    done
    die "$name on port $port did not answer within ~10 s"
}

# measure ROUND SERVER: start, warm, measure, stop; appends one row to $ROWS.
measure() {
    local round=$1 name=$2 port=${PORT[$2]} out=$WORK/r$1-$2 pid
    "start_$name"
    pid=${PID[$name]}
    wait_ready "$name" "$port"

    run_dnsperf "$out.warm" -p "$port" -d "$NAMES_FILE" -n 1 -Q "$WARM_QPS" -t 2
    local warm_ok warm_noerror
    warm_ok=$(stat_of "$out.warm" "Queries completed")
    warm_noerror=$(awk '/Response codes:/ { for (i = 1; i < NF; i++) if ($i == "NOERROR") print $(i + 1) }' "$out.warm")
    [ "$warm_ok" = "$NAMES" ] && [ "$warm_noerror" = "$NAMES" ] ||
        die "$name: warm-up got $warm_ok answers, $warm_noerror NOERROR, of $NAMES queries"
    [ "$("$DIG" @127.0.0.1 -p "$port" +short +tries=1 +time=1 "$LAST_NAME" A)" = 192.0.2.1 ] ||
        die "$name: wrong answer for $LAST_NAME after warm-up"

    local idle_rss up0 up1 snap0 snap1 snap2
    idle_rss=$(rss_kib "$pid")
    up0=$(upstream_queries)
    snap0=$(snapshot "$pid")
    run_dnsperf "$out.lat" -p "$port" -d "$NAMES_FILE" -l "$LAT_SECONDS" -Q "$LAT_QPS" -c 4 -q 100 -t 1 -v
    snap1=$(snapshot "$pid")
    run_dnsperf "$out.qps" -p "$port" -d "$NAMES_FILE" -l "$QPS_SECONDS" -c "$CLIENTS" -q "$OUTSTANDING" -t 1
    snap2=$(snapshot "$pid")
    up1=$(upstream_queries)
    local after_rss
    after_rss=$(rss_kib "$pid")
    stop "$name"

    # Nearest-rank percentiles over every query sent: answered ones by their
    # latency, timed-out ones ("> T") ranked as infinitely slow.
    local p50 p99 lat_done
    lat_done=$(stat_of "$out.lat" "Queries completed")
    read -r p50 p99 < <(awk '$1 == ">" && NF == 5 { print $5 * 1e6 } $1 == ">" && $2 == "T" { print "inf" }' "$out.lat" |
        sort -g | awk '{ v[NR] = $1 }
            function pct(p,  r) { r = int(p * NR); if (r < p * NR) r++; if (r < 1) r = 1;
                                  return v[r] == "inf" ? "lost" : sprintf("%.0f", v[r]) }
            END { if (NR == 0) print "none none"; else print pct(0.50), pct(0.99) }')

    local qps answered lost secs srv_ticks cpu_us busy client_busy others
    qps=$(stat_of "$out.qps" "Queries per second")
    answered=$(stat_of "$out.qps" "Queries completed")
    lost=$(stat_of "$out.qps" "Queries lost")
    secs=$(stat_of "$out.qps" "Run time (s)")
    [ "${answered:-0}" -gt 0 ] && [ "${lat_done:-0}" -gt 0 ] ||
        die "$name answered no queries (max-qps run: ${answered:-?}, latency run: ${lat_done:-?})"
    srv_ticks=$((${snap2%% *} - ${snap1%% *}))
    cpu_us=$(awk -v t="$srv_ticks" -v hz="$CLK_TCK" -v n="$answered" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    busy=$(awk -v t="$srv_ticks" -v hz="$CLK_TCK" -v s="$secs" 'BEGIN { printf "%.0f", t / hz / s * 100 }')
    client_busy=$(awk -v c="$(cat "$out.qps.cpu")" -v s="$secs" 'BEGIN { printf "%.0f", c / s * 100 }')
    others=$(printf '%s\n' "$(others_pct "$snap0" "$snap1" "$out.lat")" "$(others_pct "$snap1" "$snap2" "$out.qps")" | sort -n | tail -n 1)

    printf '%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$qps" "$answered" "$lost" \
        "$p50" "$p99" "$idle_rss" "$after_rss" "$cpu_us" "$busy" "$client_busy" "$((up1 - up0))" "$others" >>"$ROWS"
    printf '  round %s %-8s %8.0f qps (server %s%% busy, dnsperf %s%%, others %s%%)  p50 %s us  p99 %s us  cpu %s us/q\n' \
        "$round" "$name" "$qps" "$busy" "$client_busy" "$others" "$p50" "$p99" "$cpu_us"
}

# Median over rounds of column $2 for server $1 (the lower one when even);
# a "lost" percentile ranks above every number.
median() {
    awk -F'\t' -v s="$1" -v c="$2" '$2 == s { print ($c == "lost" ? "inf" : $c) }' "$ROWS" | sort -g |
        awk '{ v[NR] = $1 } END { m = v[int((NR + 1) / 2)]; print (m == "inf" ? "lost" : m) }'
}
total() { awk -F'\t' -v s="$1" -v c="$2" '$2 == s { t += $c } END { print t + 0 }' "$ROWS"; }

ROWS=$WORK/rows.tsv
: >"$ROWS"
start_upstream
check_upstream_ttl
echo "benchmark ($MODE): $ROUNDS round(s), $NAMES names, servers on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU"
for round in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2; do
        measure "$round" "${SERVERS[$(((i + round - 1) % 3))]}"
    done
done

# Table: one row per metric; $3 is the column, $4 a printf format, $5 the
# scale applied to the raw value; "median" or "total" over rounds.
row() {
    local label=$1 how=$2 col=$3 fmt=$4 scale=$5 s line
    declare -A v=()
    for s in "${SERVERS[@]}"; do v[$s]=$("$how" "$s" "$col"); done
    line="| $label"
    for s in "${SERVERS[@]}"; do
        line+=" | $(awk -v x="${v[$s]}" -v k="$scale" -v f="$fmt" 'BEGIN { if (x ~ /^[0-9.]+$/) printf f, x * k; else print x }')"
    done
    for s in unbound dnsmasq; do
        line+=" | $(awk -v a="${v[$s]}" -v b="${v[moat]}" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }')"
    done
    echo "$line |"
}

RESULTS_DIR=bench-results
mkdir -p "$RESULTS_DIR"
REPORT=$RESULTS_DIR/dnsperf-$MODE-$(date +%Y%m%d-%H%M%S).md
{
    echo "## Moat vs unbound vs dnsmasq: cache hits ($MODE, $(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "$ROUNDS round(s), $NAMES names, medians over rounds; ratios are server/moat."
    echo "Servers pinned to CPU $SERVER_CPU, dnsperf to CPU $CLIENT_CPU;" \
        "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(uname -r)."
    versions_line
    echo
    echo "| metric | moat | unbound | dnsmasq | unbound/moat | dnsmasq/moat |"
    echo "|---|--:|--:|--:|--:|--:|"
    row "max qps (${QPS_SECONDS} s, no rate limit)" median 3 "%.0f" 1
    row "p50 latency at $LAT_QPS qps (us)" median 6 "%.0f" 1
    row "p99 latency at $LAT_QPS qps (us)" median 7 "%.0f" 1
    row "idle RSS (MiB)" median 8 "%.1f" 0.0009765625
    row "RSS after load (MiB)" median 9 "%.1f" 0.0009765625
    row "server CPU per answered query, max-qps run (us)" median 10 "%.2f" 1
    row "server CPU busy in max-qps run (%)" median 11 "%.0f" 1
    row "dnsperf CPU busy in max-qps run (%)" median 12 "%.0f" 1
    row "queries lost in max-qps runs (total)" total 5 "%.0f" 1
    row "upstream queries while measured (total)" total 13 "%.0f" 1
    row "CPU taken by other processes (%, worst core and run)" median 14 "%.0f" 1
    echo
    echo "Per round:"
    echo
    echo "| round | server | qps | answered | lost | p50 us | p99 us | idle RSS KiB | RSS after KiB | CPU us/q | server busy % | dnsperf busy % | upstream q | others % |"
    echo "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    awk -F'\t' -v OFS=' | ' '{ $1 = $1; print "| " $0 " |" }' "$ROWS"
    echo
    echo "dnsperf command lines (round 1, moat; other servers differ only in port):"
    echo
    for kind in warm lat qps; do echo "    $(cat "$WORK/r1-moat.$kind.cmd")"; done
    echo
    echo "Percentiles: nearest rank over every query sent in the latency run, from dnsperf -v"
    echo "per-query latencies; queries that timed out count as infinitely slow (shown as 'lost')."
    echo
    echo "Warnings and errors in the servers' logs (digits folded to N; count, line):"
    echo
    log_warnings "${SERVERS[@]}"
    if awk -F'\t' '$12 >= 95 { found = 1 } END { exit !found }' "$ROWS"; then
        echo
        echo "Note: dnsperf kept its core at least 95% busy in some max-qps run: there the load"
        echo "generator, not the server, set the ceiling. Compare CPU per query and server busy %."
    fi
    if awk -F'\t' '$14 > 10 { found = 1 } END { exit !found }' "$ROWS"; then
        echo
        echo "**Warning: other processes took over 10% of a benchmark core during some measured run;"
        echo "those figures are not reliable. Rerun on an otherwise idle machine.**"
    fi
} | tee "$REPORT"
echo
echo "saved to $REPORT"
