# Helpers shared by the benchmark scripts in benches/ (sourced, not run).
#
# A script sets SERVER_CPU, CLIENT_CPU and MIN_TTL, sources this file, then
# calls bench_init (tools, moat binary, work directory, cleanup trap). Server
# processes go in the associative array PID (name -> pid); `stop NAME` ends
# one, and the EXIT trap ends them all and removes $WORK, printing the tail of
# every $WORK/*.log when the script fails. MOAT names the binary to measure.

BENCH_SCRIPT=$(basename "$0")
MOAT=${MOAT:-target/release/moat}

die() { echo "$BENCH_SCRIPT: error: $*" >&2; exit 1; }

# tool NAME PACKAGE: the path of a required program.
tool() {
    local path
    path=$(command -v "$1" 2>/dev/null) || path=/usr/sbin/$1
    [ -x "$path" ] || die "required tool '$1' not found (Debian package: $2)"
    echo "$path"
}

bench_init() {
    DNSPERF=$(tool dnsperf dnsperf)
    UNBOUND=$(tool unbound unbound)
    DNSMASQ=$(tool dnsmasq dnsmasq-base)
    TASKSET=$(tool taskset util-linux)
    DIG=$(tool dig bind9-dnsutils)
    PYTHON=$(tool python3 python3)
    "$TASKSET" -c "$CLIENT_CPU" true 2>/dev/null || die "needs CPUs $SERVER_CPU and $CLIENT_CPU (found $(nproc))"
    CLK_TCK=$(getconf CLK_TCK)

    if [ ! -x "$MOAT" ]; then
        echo "building $MOAT"
        cargo build --workspace --release
    fi
    if [ -n "$(find appliance plugins -newer "$MOAT" -type f 2>/dev/null | head -n 1)" ]; then
        echo "warning: $MOAT is older than sources in appliance/ or plugins/; run cargo build --workspace --release" >&2
    fi

    WORK=$(mktemp -d "${TMPDIR:-/tmp}/moat-bench.XXXXXX")
    declare -gA PID=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

stop() {
    local name=$1 pid=${PID[$1]:-} i
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PID[$name]"
}

cleanup() {
    local rc=$? name log
    for name in "${!PID[@]}"; do stop "$name"; done
    if [ "$rc" -ne 0 ]; then
        for log in "$WORK"/*.log; do
            [ -f "$log" ] || continue
            echo "--- last lines of $log" >&2
            tail -n 15 "$log" >&2
        done
    fi
    rm -rf "$WORK"
}

# free_ports N: N distinct loopback ports, each free on both UDP and TCP.
free_ports() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
want = int(sys.argv[1])
held, ports = [], []
for _ in range(100 + want):
    if len(ports) == want:
        break
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", port))
    except OSError:
        u.close()
        continue
    held += [u, t]
    ports.append(port)
print(*ports)
EOF
}

# The upstream every server forwards to: a dnsmasq on $UP_PORT answering
# every *.bench.test name with 192.0.2.1 and a TTL of $MIN_TTL.
start_upstream() {
    "$TASKSET" -c "$CLIENT_CPU" "$DNSMASQ" --no-daemon --no-resolv --no-hosts \
        --port="$UP_PORT" --listen-address=127.0.0.1 --bind-interfaces \
        --address=/bench.test/192.0.2.1 --local-ttl="$MIN_TTL" \
        >>"$WORK/upstream.log" 2>&1 &
    PID[upstream]=$!
}

check_upstream_ttl() {
    local ttl i
    for i in $(seq 50); do
        ttl=$("$DIG" @127.0.0.1 -p "$UP_PORT" +noall +answer +tries=1 +time=1 n00001.bench.test A | awk '{ print $2 }')
        [ -n "$ttl" ] && break
        sleep 0.1
    done
    [ -n "$ttl" ] && [ "$ttl" -ge "$MIN_TTL" ] || die "upstream answers with TTL '${ttl}', want >= $MIN_TTL"
}

# Queries answered by the upstream so far (from its SIGUSR1 statistics dump).
upstream_queries() {
    local log=$WORK/upstream.log before i
    before=$(grep -c 'queries answered locally' "$log" || true)
    kill -USR1 "${PID[upstream]}"
    for i in $(seq 100); do
        [ "$(grep -c 'queries answered locally' "$log" || true)" -gt "$before" ] && break
        sleep 0.05
    done
    grep 'queries answered locally' "$log" | tail -n 1 |
        sed -E 's/.*queries forwarded ([0-9]+), queries answered locally ([0-9]+).*/\1 \2/' |
        awk '{ print $1 + $2 }'
}

# Pulls one figure out of dnsperf's summary: "Queries completed:  N (..)".
stat_of() { awk -v key="$2" -F': *' '{ sub(/^ +/, "", $1) } $1 == key { split($2, v, " "); print v[1] }' "$1"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }  # utime+stime
core_ticks() { awk -v cpu="cpu$1" '$1 == cpu { print $2 + $3 + $4 }' /proc/stat; }  # user+nice+system

# Runs dnsperf; its output goes to $1, its CPU seconds (user+system) to $1.cpu.
run_dnsperf() {
    local out=$1; shift
    local cmd=("$TASKSET" -c "$CLIENT_CPU" "$DNSPERF" -s 127.0.0.1 "$@") TIMEFORMAT='%U %S'
    echo "${cmd[*]}" >"$out.cmd"
    { time "${cmd[@]}" >"$out" 2>&1 || die "dnsperf failed ($(tail -n 1 "$out")): ${cmd[*]}"; } 2>"$out.time"
    awk '{ print $1 + $2 }' "$out.time" >"$out.cpu"
}

# Ticks so far: the server ($1), its core, dnsperf's core.
snapshot() { echo "$(cpu_ticks "$1") $(core_ticks "$SERVER_CPU") $(core_ticks "$CLIENT_CPU")"; }

# Percent of the busier benchmark core that other processes (a compiler,
# say) took during a dnsperf run: core time spent neither by the server nor
# by dnsperf. Arguments: snapshots before and after, dnsperf output file.
others_pct() {
    local -a a=($1) b=($2)
    awk -v srv=$((b[0] - a[0])) -v core=$((b[1] - a[1])) -v client=$((b[2] - a[2])) \
        -v dnsperf="$(cat "$3.cpu")" -v secs="$(stat_of "$3" "Run time (s)")" -v hz="$CLK_TCK" 'BEGIN {
            x = (core - srv) / hz; y = client / hz - dnsperf; m = x > y ? x : y
            printf "%.0f", (m > 0 ? m : 0) / secs * 100 }'
}

versions_line() {
    echo "Versions: moat $("$MOAT" --version | awk '{ print $NF }'), unbound $("$UNBOUND" -V | awk 'NR == 1 { print $2 }')," \
        "dnsmasq $("$DNSMASQ" --version | awk 'NR == 1 { print $3 }'), dnsperf $("$DNSPERF" -h 2>&1 | awk '/^Version/ { print $2 }')."
}

# Warnings and errors in the servers' logs, digits folded to N (count, line).
log_warnings() {
    local s
    for s in "$@"; do
        [ -f "$WORK/$s.log" ] || continue
        grep -Ei 'warn|error|fail|panic' "$WORK/$s.log" | sed -E 's/^[0-9T:.-]+Z +//; s/[0-9]+/N/g' |
            sort | uniq -c | sort -rn | head -n 5 | sed "s/^/    $s: /" || true
    done
}

# Writes an unbound config to $1: loopback port $2, working directory $3,
# forwarding to the test upstream on $UP_PORT; any further arguments are
# extra `server:` lines (a list's `include:`). test. is an RFC 6761
# default local zone (NXDOMAIN): "nodefault" lets bench.test through; no
# validator module, so nothing is DNSSEC-checked.
write_unbound_conf() {
    local file=$1 port=$2 dir=$3 line
    shift 3
    {
        cat <<EOF
server:
    interface: 127.0.0.1
    port: $port
    do-ip6: no
    num-threads: 1
    do-daemonize: no
    chroot: ""
    username: ""
    pidfile: ""
    directory: "$dir"
    use-syslog: no
    logfile: ""
    module-config: "iterator"
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    msg-cache-size: 16m
    rrset-cache-size: 32m
    local-zone: "test." nodefault
    domain-insecure: "bench.test"
EOF
        for line in "$@"; do echo "    $line"; done
        cat <<EOF
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$UP_PORT
EOF
    } >"$file"
}

