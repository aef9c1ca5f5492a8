#!/usr/bin/env bash
# Blocklist benchmark: what a large list costs Moat, against unbound and
# dnsmasq holding the same list, in one run.
#
# A list of N distinct generated domains (dI.trackerJ.example; N = 1,000,000,
# or 10,000 in smoke mode) is given to every server in its own syntax:
#   moat     a hosts file (`0.0.0.0 name`), as [[policy.blocklists]];
#   unbound  `local-zone: "name." always_null` lines in an included file
#            (always_null answers 0.0.0.0 for A, like Moat, and covers the
#            names below, like a Moat list entry);
#   dnsmasq  `address=/name/0.0.0.0` lines in a --conf-file (also the name
#            and everything below it; --addn-hosts would be exact names only).
# It reports:
#   1. `moat policy compile` of the list: wall time (median of 3), CPU time,
#      peak RSS, module bytes and bytes per domain;
#   2. start to first answer: from launching the server until it answers the
#      list's last name with 0.0.0.0, polled with dig about every 10 ms (dig
#      pinned to the client CPU). Moat is timed twice per round: with an empty
#      data directory, then restarted on the data directory that first start
#      left (persisted policy). Moat without a list is timed to its first
#      forwarded answer, for reference;
#   3. whole-process RSS (VmRSS) once the server has answered and gone idle
#      (no CPU tick over 200 ms), and the peak (VmHWM) since start: moat with
#      the list, moat without, unbound and dnsmasq;
#   4. cache hits, moat with the list against moat without: the *.bench.test
#      workload of benches/dnsperf.sh (names not in the list, forwarded once
#      to the upstream during a verified warm-up, then answered from the
#      cache; the upstream's counter proves it): max qps with dnsperf for a
#      fixed time, and server CPU (utime+stime from /proc/PID/stat) per
#      answered query.
# Servers run pinned to CPU 0, dnsperf and dig to CPU 1. Rounds are
# interleaved (every server started afresh each round, in rotated order);
# figures are medians over rounds. Ratios: other/moat, and moat with the list
# over moat without. Targets from the issue are reported, not asserted. The
# markdown table is printed and saved under bench-results/.
#
# Run:  benches/policy.sh                     full: 1M domains, 3 rounds, ~2 min
#       MOAT_BENCH_SMOKE=1 benches/policy.sh  smoke: 10k domains, 1 round, ~10 s
# Needs: dnsperf, unbound, dnsmasq, taskset, dig, python3, two CPUs, ~1 GB RAM
# (unbound holds a 1M-zone list in about 0.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${MOAT_BENCH_SMOKE:-0}" = 1 ]; then
    MODE=smoke ROUNDS=1 DOMAINS=10000 NAMES=1000 QPS_SECONDS=1
else
    MODE=full ROUNDS=3 DOMAINS=1000000 NAMES=10000 QPS_SECONDS=10
fi
COMPILES=3           # `moat policy compile` runs; the median is reported
WARM_QPS=5000        # as in dnsperf.sh: no forwarded query is dropped
CLIENTS=4            # dnsperf sockets and queries in flight of the max-qps
OUTSTANDING=128      # run, as in dnsperf.sh
POLL_GAP=0.01        # seconds between first-answer polls
START_LIMIT=90       # seconds a server may take to give its first answer
SERVER_CPU=0
CLIENT_CPU=1
MIN_TTL=3600         # the upstream TTL must outlast the whole run
SERVERS=(moat moat-nolist unbound dnsmasq)

. benches/lib.sh
bench_init

read -r UP_PORT MOAT_PORT NOLIST_PORT UNBOUND_PORT DNSMASQ_PORT < <(free_ports 5)
[ -n "${DNSMASQ_PORT:-}" ] || die "could not find five free loopback ports"
declare -A PORT=([moat]=$MOAT_PORT [moat-nolist]=$NOLIST_PORT [unbound]=$UNBOUND_PORT [dnsmasq]=$DNSMASQ_PORT)

# The cache-hit workload: names the list does not hold.
NAMES_FILE=$WORK/names.txt
for i in $(seq 1 "$NAMES"); do printf 'n%05d.bench.test A\n' "$i"; done >"$NAMES_FILE"
LAST_NAME=$(printf 'n%05d.bench.test' "$NAMES")

# The list, in each server's syntax. Its last name is the one polled at start.
LIST=$WORK/list.hosts
awk -v n="$DOMAINS" 'BEGIN { for (i = 1; i <= n; i++) printf "0.0.0.0 d%d.tracker%d.example\n", i, i % 1000 }' >"$LIST"
BLOCKED=$(tail -n 1 "$LIST" | awk '{ print $2 }')
awk '{ printf "local-zone: \"%s.\" always_null\n", $2 }' "$LIST" >"$WORK/unbound-list.conf"
awk '{ printf "address=/%s/0.0.0.0\n", $2 }' "$LIST" >"$WORK/dnsmasq-list.conf"

# moat_config FILE PORT DATA_DIR [LIST]
moat_config() {
    cat >"$1" <<EOF
[instance]
name = "bench"
listen = ["127.0.0.1:$2"]
control = "127.0.0.1:0"
data_dir = "$3"

[policy]
upstreams = ["udp://127.0.0.1:$UP_PORT"]

[tuning.cache]
max_ttl = "1d"
EOF
    if [ -n "${4:-}" ]; then
        printf '\n[[policy.blocklists]]\nsource = "%s"\n' "$4" >>"$1"
    fi
}
moat_config "$WORK/moat.toml" "$MOAT_PORT" "$WORK/moat-data" "$LIST"
moat_config "$WORK/moat-nolist.toml" "$NOLIST_PORT" "$WORK/moat-nolist-data"
moat_config "$WORK/compile.toml" "$MOAT_PORT" "$WORK/compile-data" "$LIST"

mkdir -p "$WORK/unbound"
write_unbound_conf "$WORK/unbound.conf" "$UNBOUND_PORT" "$WORK/unbound" \
    "include: \"$WORK/unbound-list.conf\""

# Launches a server and records the launch time in T0[name].
declare -A T0=()
launch() {
    local name=$1
    local -a cmd
    case $name in
        moat) cmd=("$MOAT" run --config "$WORK/moat.toml") ;;
        moat-nolist) cmd=("$MOAT" run --config "$WORK/moat-nolist.toml") ;;
        unbound) cmd=("$UNBOUND" -d -c "$WORK/unbound.conf") ;;
        dnsmasq) cmd=("$DNSMASQ" --no-daemon --no-resolv --no-hosts \
            --port="$DNSMASQ_PORT" --listen-address=127.0.0.1 --bind-interfaces \
            --server="127.0.0.1#$UP_PORT" --cache-size=$((NAMES * 2)) \
            --conf-file="$WORK/dnsmasq-list.conf") ;;
    esac
    echo "--- launch $(date -u +%H:%M:%S.%N)" >>"$WORK/$name.log"
    T0[$name]=$EPOCHREALTIME
    "$TASKSET" -c "$SERVER_CPU" "${cmd[@]}" >>"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
}

ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }

# first_answer NAME QNAME WANT: polls until the server answers QNAME (A)
# with WANT; prints the milliseconds since launch, the polls, and the percent
# of the server's core that other processes took meanwhile.
first_answer() {
    local name=$1 qname=$2 want=$3 port=${PORT[$1]} pid=${PID[$1]} core0 answer i ms
    core0=$(core_ticks "$SERVER_CPU")
    for i in $(seq 1 100000); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up"
        answer=$("$TASKSET" -c "$CLIENT_CPU" "$DIG" @127.0.0.1 -p "$port" +short +tries=1 +time=1 "$qname" A 2>/dev/null || true)
        if [ "$answer" = "$want" ]; then
            ms=$(ms_since "${T0[$name]}")
            awk -v ms="$ms" -v i="$i" -v core=$(($(core_ticks "$SERVER_CPU") - core0)) -v srv="$(cpu_ticks "$pid")" \
                -v hz="$CLK_TCK" 'BEGIN { o = (core - srv) / hz / (ms / 1000) * 100   # the server started after core0
                                          printf "%s %s %.0f\n", ms, i, (o > 100 ? 100 : o > 0 ? o : 0) }'
            return 0
        fi
        [ "$(ms_since "${T0[$name]}")" -lt $((START_LIMIT * 1000)) ] ||
            die "$name gave no answer '$want' for $qname within $START_LIMIT s (last: $answer)"
        sleep "$POLL_GAP"
    done
    die "$name: too many polls"
}

# Waits until the server used no CPU tick for 200 ms (at most ~10 s).
settle() {
    local pid=$1 prev cur i
    prev=$(cpu_ticks "$pid")
    for i in $(seq 50); do
        sleep 0.2
        cur=$(cpu_ticks "$pid")
        [ "$cur" = "$prev" ] && return 0
        prev=$cur
    done
    echo "  note: $2 still used CPU after 10 s idle" >&2
}

# Seconds from launch to moat's "policy compiled" log line (the policy
# compile within start-up), from the last launch recorded in the log.
moat_compile_at_start() {
    local log=$WORK/$1.log stamp
    stamp=$(awk '/^--- launch/ { l = "" } /policy compiled/ { l = $1 } END { print l }' "$log" | sed 's/\x1b\[[0-9;]*m//g')
    [ -n "$stamp" ] || { echo "-"; return; }
    awk -v a="${T0[$1]}" -v b="$(date -d "$stamp" +%s.%N)" 'BEGIN { printf "%.0f", (b - a) * 1000 }'
}

# cache_hits NAME OUT: warms the cache, runs dnsperf without a rate limit;
# prints qps, answered, lost, CPU us/query, server busy %, dnsperf busy %,
# upstream queries while measured, others %, RSS after.
cache_hits() {
    local name=$1 out=$2 port=${PORT[$1]} pid=${PID[$1]}
    local i ok=0
    for i in $(seq 100); do
        if [ "$("$DIG" @127.0.0.1 -p "$port" +short +tries=1 +time=1 n00001.bench.test A 2>/dev/null || true)" = 192.0.2.1 ]; then
            ok=1; break
        fi
        sleep 0.1
    done
    [ "$ok" = 1 ] || die "$name does not forward n00001.bench.test"
    run_dnsperf "$out.warm" -p "$port" -d "$NAMES_FILE" -n 1 -Q "$WARM_QPS" -t 2
    local warm_ok warm_noerror
    warm_ok=$(stat_of "$out.warm" "Queries completed")
    warm_noerror=$(awk '/Response codes:/ { for (i = 1; i < NF; i++) if ($i == "NOERROR") print $(i + 1) }' "$out.warm")
    [ "$warm_ok" = "$NAMES" ] && [ "$warm_noerror" = "$NAMES" ] ||
        die "$name: warm-up got $warm_ok answers, $warm_noerror NOERROR, of $NAMES queries"
    [ "$("$DIG" @127.0.0.1 -p "$port" +short +tries=1 +time=1 "$LAST_NAME" A)" = 192.0.2.1 ] ||
        die "$name: wrong answer for $LAST_NAME after warm-up"

    local up0 up1 snap0 snap1
    up0=$(upstream_queries)
    snap0=$(snapshot "$pid")
    run_dnsperf "$out.qps" -p "$port" -d "$NAMES_FILE" -l "$QPS_SECONDS" -c "$CLIENTS" -q "$OUTSTANDING" -t 1
    snap1=$(snapshot "$pid")
    up1=$(upstream_queries)

    local qps answered lost secs srv_ticks
    qps=$(stat_of "$out.qps" "Queries per second")
    answered=$(stat_of "$out.qps" "Queries completed")
    lost=$(stat_of "$out.qps" "Queries lost")
    secs=$(stat_of "$out.qps" "Run time (s)")
    [ "${answered:-0}" -gt 0 ] || die "$name answered no queries in the max-qps run"
    srv_ticks=$((${snap1%% *} - ${snap0%% *}))
    awk -v qps="$qps" -v n="$answered" -v lost="$lost" -v t="$srv_ticks" -v hz="$CLK_TCK" -v s="$secs" \
        -v c="$(cat "$out.qps.cpu")" -v up=$((up1 - up0)) -v others="$(others_pct "$snap0" "$snap1" "$out.qps")" \
        -v rss="$(rss_kib "$pid")" 'BEGIN {
            printf "%.0f\t%s\t%s\t%.3f\t%.0f\t%.0f\t%s\t%s\t%s\n", qps, n, lost, t / hz * 1e6 / n, t / hz / s * 100,
                c / s * 100, up, others, rss }'
}

# Rows: round, server, start ms (empty data dir), restart ms (persisted
# policy), polls, others % at start, compile-at-start ms, idle RSS KiB, peak
# RSS KiB, then the cache_hits columns (qps .. RSS after) or "-".
ROWS=$WORK/rows.tsv
: >"$ROWS"
NO_LOAD=$(printf '\t-%.0s' $(seq 9))

# fmt VALUE FORMAT SCALE: VALUE scaled and formatted, or "-".
fmt() { awk -v x="$1" -v f="$2" -v k="${3:-1}" 'BEGIN { if (x ~ /^[0-9.]+$/) printf f, x * k; else printf "-" }'; }
MIB=0.0009765625

measure() {
    local round=$1 name=$2 out=$WORK/r$1-$2 start restart="-" polls others at_start="-" rss hwm load="${NO_LOAD#?}"
    local s others2
    case $name in
        moat)
            rm -rf "$WORK/moat-data"
            launch moat
            read -r start polls others < <(first_answer moat "$BLOCKED" 0.0.0.0)
            at_start=$(moat_compile_at_start moat)
            settle "${PID[moat]}" moat
            stop moat
            launch moat    # the data directory now holds the persisted policy
            read -r restart s others2 < <(first_answer moat "$BLOCKED" 0.0.0.0)
            [ "$others2" -le "$others" ] || others=$others2
            ;;
        moat-nolist)
            rm -rf "$WORK/moat-nolist-data"
            launch "$name"
            read -r start polls others < <(first_answer "$name" n00001.bench.test 192.0.2.1)
            ;;
        *)
            launch "$name"
            read -r start polls others < <(first_answer "$name" "$BLOCKED" 0.0.0.0)
            ;;
    esac
    if [ "$name" != moat-nolist ]; then
        [ "$("$DIG" @127.0.0.1 -p "${PORT[$name]}" +short +tries=1 +time=1 "below.$BLOCKED" A)" = 0.0.0.0 ] ||
            die "$name: wrong answer for below.$BLOCKED"
    fi
    settle "${PID[$name]}" "$name"
    rss=$(rss_kib "${PID[$name]}")
    hwm=$(hwm_kib "${PID[$name]}")
    case $name in moat | moat-nolist) load=$(cache_hits "$name" "$out") ;; esac
    stop "$name"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$start" "$restart" "$polls" "$others" \
        "$at_start" "$rss" "$hwm" "$load" >>"$ROWS"
    printf '  round %s %-12s first answer %6s ms (restart %s ms, %s polls, others %s%%)  idle RSS %6.1f MiB  peak %6.1f MiB' \
        "$round" "$name" "$start" "$restart" "$polls" "$others" "$(fmt "$rss" %.1f $MIB)" "$(fmt "$hwm" %.1f $MIB)"
    if [ "${load%%$'\t'*}" != "-" ]; then
        awk -F'\t' '{ printf "  %s qps, cpu %s us/q (others %s%%)", $1, $4, $8 }' <<<"$load"
    fi
    echo
}

# Median of column $2 for server $1 over rounds (the lower one when even);
# "-" when the column holds no number.
median() {
    awk -F'\t' -v s="$1" -v c="$2" '$2 == s && $c ~ /^[0-9.]+$/ { print $c }' "$ROWS" | sort -g |
        awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "-") }'
}
total() { awk -F'\t' -v s="$1" -v c="$2" '$2 == s && $c ~ /^[0-9.]+$/ { t += $c; n++ } END { print (n ? t : "-") }' "$ROWS"; }
maximum() { awk -F'\t' -v s="$1" -v c="$2" '$2 == s && $c ~ /^[0-9.]+$/ { if (!n++ || $c > m) m = $c } END { print (n ? m : "-") }' "$ROWS"; }

# timed FILE CMD...: runs CMD (stdout to FILE); prints wall seconds, CPU
# seconds (user+system) and peak RSS KiB of it. GNU time gives the peak RSS
# of the command alone; without it the peak is "-" (a wrapper written in
# Python would report at least its own RSS: the kernel carries a process's
# peak across exec).
GNU_TIME=/usr/bin/time
"$GNU_TIME" -f %M true >/dev/null 2>&1 || GNU_TIME=
timed() {
    local out=$1; shift
    if [ -n "$GNU_TIME" ]; then
        "$GNU_TIME" -o "$out.time" -f '%e %U %S %M' "$@" >"$out" || return 1
        awk '{ printf "%.3f %.3f %s\n", $1, $2 + $3, $4 }' "$out.time"
    else
        local TIMEFORMAT='%R %U %S'
        { time "$@" >"$out" || return 1; } 2>"$out.time"
        awk '{ printf "%.3f %.3f -\n", $1, $2 + $3 }' "$out.time"
    fi
}

start_upstream
check_upstream_ttl
echo "policy benchmark ($MODE): $DOMAINS domains, $ROUNDS round(s), servers on CPU $SERVER_CPU, dnsperf and dig on CPU $CLIENT_CPU"

# 1. Offline compile.
COMPILE_ROWS=$WORK/compile.tsv
: >"$COMPILE_ROWS"
for k in $(seq 1 "$COMPILES"); do
    rm -rf "$WORK/compiled" "$WORK/compile-data"
    core0=$(core_ticks "$SERVER_CPU") t0=$EPOCHREALTIME
    timed "$WORK/compile-$k.json" "$TASKSET" -c "$SERVER_CPU" "$MOAT" policy compile \
        --config "$WORK/compile.toml" --out "$WORK/compiled" >"$WORK/compile-$k.figures" ||
        die "moat policy compile failed: $(cat "$WORK/compile-$k.json")"
    read -r wall cpu peak <"$WORK/compile-$k.figures"
    # Percent of CPU 0 that other processes took while it ran (over the
    # whole wrapper; ticks are 1/$CLK_TCK s, so short runs read coarse).
    others=$(awk -v core=$(($(core_ticks "$SERVER_CPU") - core0)) -v cpu="$cpu" -v t0="$t0" -v t1="$EPOCHREALTIME" \
        -v hz="$CLK_TCK" 'BEGIN { o = (core / hz - cpu) / (t1 - t0) * 100; printf "%.0f", (o > 100 ? 100 : o > 0 ? o : 0) }')
    printf '%s\t%s\t%s\t%s\t%s\n' "$k" "$wall" "$cpu" "$peak" "$others" >>"$COMPILE_ROWS"
    printf '  compile %s: %s s wall, %s s CPU, peak RSS %s KiB (others %s%%)\n' "$k" "$wall" "$cpu" "$peak" "$others"
done
read -r MODULE_BYTES LIST_BLOCKED LIST_REJECTED < <("$PYTHON" -c '
import json, sys
j = json.load(open(sys.argv[1]))
print(j["summary"]["module_bytes"], sum(s["blocked"] for s in j["sources"]), sum(s["rejected"] for s in j["sources"]))
' "$WORK/compile-1.json")
[ "$LIST_BLOCKED" = "$DOMAINS" ] || die "moat read $LIST_BLOCKED of $DOMAINS domains ($LIST_REJECTED lines rejected)"
cmedian() { cut -f "$1" "$COMPILE_ROWS" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
COMPILE_WALL=$(cmedian 2) COMPILE_CPU=$(cmedian 3) COMPILE_PEAK=$(cmedian 4)
COMPILE_OTHERS=$(cut -f 5 "$COMPILE_ROWS" | sort -n | tail -n 1)

# 2-4. Servers, interleaved rounds.
for round in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2 3; do
        measure "$round" "${SERVERS[$(((i + round - 1) % 4))]}"
    done
done

# Table. ratio A B.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else printf "-" }'; }
# verdict VALUE LIMIT: "met" or "missed" (VALUE <= LIMIT).
verdict() { awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/) print "n/a"; else print (a <= b ? "met" : "missed") }'; }

# row LABEL FUNC COLUMN FORMAT SCALE TARGET: one metric across the servers.
row() {
    local label=$1 how=$2 col=$3 f=$4 k=$5 target=${6:-} s
    declare -A v=()
    for s in "${SERVERS[@]}"; do v[$s]=$("$how" "$s" "$col"); done
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
        "$(fmt "${v[moat]}" "$f" "$k")" "$(fmt "${v[moat-nolist]}" "$f" "$k")" \
        "$(fmt "${v[unbound]}" "$f" "$k")" "$(fmt "${v[dnsmasq]}" "$f" "$k")" \
        "$(ratio "${v[moat]}" "${v[moat-nolist]}")" "$(ratio "${v[unbound]}" "${v[moat]}")" \
        "$(ratio "${v[dnsmasq]}" "${v[moat]}")" "$target"
}
only_moat() {
    printf '| %s | %s | - | - | - | - | - | - | %s |\n' "$1" "$2" "${3:-}"
}

RSS_LIMIT_KIB=$((32 * 1024))
IDLE_RSS=$(median moat 8)
PEAK_RSS=$(maximum moat 9)
RESTART_MS=$(median moat 4)
CPU_RATIO=$(ratio "$(median moat 13)" "$(median moat-nolist 13)")

RESULTS_DIR=bench-results
mkdir -p "$RESULTS_DIR"
REPORT=$RESULTS_DIR/policy-$MODE-$(date +%Y%m%d-%H%M%S).md
{
    echo "## Moat with a $DOMAINS-domain blocklist, vs unbound and dnsmasq ($MODE, $(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "$ROUNDS round(s), medians over rounds (compile: median of $COMPILES runs). Ratios: list/no list is moat"
    echo "with the list over moat without; unbound/moat and dnsmasq/moat compare with moat holding the list."
    echo "Servers, and the compile, pinned to CPU $SERVER_CPU; dnsperf and dig to CPU $CLIENT_CPU;" \
        "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(uname -r)."
    versions_line
    echo "Lists: moat a hosts file (\`0.0.0.0 name\`), unbound \`local-zone: \"name.\" always_null\` (included file)," \
        "dnsmasq \`address=/name/0.0.0.0\` (--conf-file); every entry also covers the names below it."
    echo
    echo "| metric | moat, list | moat, no list | unbound, list | dnsmasq, list | list/no list | unbound/moat | dnsmasq/moat | target (issue) |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|---|"
    only_moat "\`moat policy compile\`, wall (s)" "$(fmt "$COMPILE_WALL" %.2f)" \
        "<= 2 s: $(verdict "$COMPILE_WALL" 2)"
    only_moat "\`moat policy compile\`, CPU user+sys (s)" "$(fmt "$COMPILE_CPU" %.2f)"
    only_moat "\`moat policy compile\`, peak RSS (MiB)" "$(fmt "$COMPILE_PEAK" %.1f $MIB)"
    only_moat "blocklist module (MiB)" "$(fmt "$MODULE_BYTES" %.2f 0.00000095367431640625)"
    only_moat "module bytes per domain" "$(awk -v b="$MODULE_BYTES" -v n="$DOMAINS" 'BEGIN { printf "%.2f", b / n }')"
    row "start to first answer, empty data dir (ms)" median 3 %.0f 1
    only_moat "start to first answer, persisted policy (ms)" "$(fmt "$RESTART_MS" %.0f)" \
        "<= 1 s: $(verdict "$RESTART_MS" 1000)"
    only_moat "start until \"policy compiled\" logged, empty data dir (ms)" "$(fmt "$(median moat 7)" %.0f)"
    row "idle RSS after start (MiB)" median 8 %.1f $MIB \
        "<= 32 MiB: $(verdict "$IDLE_RSS" "$RSS_LIMIT_KIB")"
    row "peak RSS since start, VmHWM (MiB; max over rounds)" maximum 9 %.1f $MIB \
        "<= 32 MiB: $(verdict "$PEAK_RSS" "$RSS_LIMIT_KIB")"
    row "cache hits: max qps (${QPS_SECONDS} s, no rate limit)" median 10 %.0f 1
    row "cache hits: server CPU per answered query (us)" median 13 %.3f 1 \
        "list/no list <= 1.05: $(verdict "$CPU_RATIO" 1.05)"
    row "cache hits: server CPU busy (%)" median 14 %.0f 1
    row "cache hits: dnsperf CPU busy (%)" median 15 %.0f 1
    row "cache hits: RSS after load (MiB)" median 18 %.1f $MIB
    row "cache hits: queries lost (total)" total 12 %.0f 1
    row "cache hits: upstream queries while measured (total)" total 16 %.0f 1
    row "CPU of other processes at start (%, worst)" maximum 6 %.0f 1
    row "CPU of other processes in max-qps runs (%, worst)" maximum 17 %.0f 1
    only_moat "CPU of other processes in compiles (%, worst)" "$(fmt "$COMPILE_OTHERS" %.0f)"
    echo
    echo "Start to first answer: from launching the server (under taskset) until dig, polling every"
    echo "${POLL_GAP} s, gets 0.0.0.0 for \`$BLOCKED\` (the list's last name); moat without a list: until"
    echo "it answers a forwarded name. Persisted policy: moat restarted on the data directory its first"
    echo "start left. Idle RSS: VmRSS once the server used no CPU tick for 200 ms after that answer."
    echo
    echo "Per round (ms, KiB, us):"
    echo
    echo "| round | server | start ms | restart ms | polls | others % at start | \"policy compiled\" ms | idle RSS | peak RSS | qps | answered | lost | CPU us/q | server busy % | dnsperf busy % | upstream q | others % | RSS after |"
    echo "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    awk -F'\t' -v OFS=' | ' '{ $1 = $1; print "| " $0 " |" }' "$ROWS"
    echo
    echo "Compiles (s, s, KiB, %):"
    echo
    echo "| run | wall | CPU | peak RSS | others % |"
    echo "|--:|--:|--:|--:|--:|"
    awk -F'\t' -v OFS=' | ' '{ $1 = $1; print "| " $0 " |" }' "$COMPILE_ROWS"
    echo
    echo "Warnings and errors in the servers' logs (digits folded to N; count, line):"
    echo
    log_warnings "${SERVERS[@]}"
    # Windows under half a second are a few clock ticks: too coarse to judge.
    if awk -F'\t' '($6 ~ /^[0-9]+$/ && $6 > 10 && $3 >= 500) || ($17 ~ /^[0-9]+$/ && $17 > 10) { found = 1 }
                   END { exit !found }' "$ROWS" ||
        awk -F'\t' '$2 >= 0.5 && $5 > 10 { found = 1 } END { exit !found }' "$COMPILE_ROWS"; then
        echo
        echo "**Warning: other processes took over 10% of a benchmark core during some measured run;"
        echo "those figures are not reliable. Rerun on an otherwise idle machine.**"
    fi
} | tee "$REPORT"
echo
echo "saved to $REPORT"
