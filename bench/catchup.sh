#!/usr/bin/env bash
# How long a fresh node takes to catch up a cluster's history.
#
#   bench/catchup.sh [N] [RUNS]
#
# Seeds node A's directory with N synthetic results (2N records, each
# result with its change: `peerbot seed-history`), starts A on it, then
# RUNS times starts a fresh node B (admitted by A, bootstrapping from A,
# loopback, ports chosen by the OS) and times, from B's start, until B
# stores as many records as A (GET /api/v1/node, "records"). Prints each
# run (with B's resident memory and peak at the end) and the medians.
#
# Environment: PEERBOT_BIN (default $CARGO_TARGET_DIR/release/peerbot, or
# target/release/peerbot); TMPDIR; SEEDED=DIR copies A's directory from
# DIR (a stopped node's directory seeded with N results) instead of
# seeding it again, which takes minutes at a million. LOGS=DIR keeps each
# run's node logs there (A.log, B1.log, ...).
set -euo pipefail

n=${1:-100000}
runs=${2:-3}
[[ $n =~ ^[1-9][0-9]*$ && $runs =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N] [RUNS]" >&2; exit 2; }
for tool in curl jq bc; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${PEERBOT_BIN:-${CARGO_TARGET_DIR:-$script_dir/../target}/release/peerbot}
[[ -x $bin ]] || { echo "no peerbot at $bin: cargo build --release -p peerbot, or set PEERBOT_BIN" >&2; exit 1; }
unset PEERBOT_DATA_DIR PEERBOT_HTTP PEERBOT_LISTEN PEERBOT_BOOTSTRAP PEERBOT_WATCH PEERBOT_LABEL \
    PEERBOT_ALLOW_REPO PEERBOT_CLUSTER PEERBOT_ADMISSION PEERBOT_SANDBOX

root=$(mktemp -d "${TMPDIR:-/tmp}/peerbot-catchup.XXXXXX")
pid_a= pid_b=
cleanup() {
    local p
    for p in $pid_a $pid_b; do kill "$p" 2>/dev/null || true; done
    for p in $pid_a $pid_b; do wait "$p" 2>/dev/null || true; done
    [[ -n ${LOGS:-} && -f $root/A/node.log ]] && mkdir -p "$LOGS" && cp "$root/A/node.log" "$LOGS/A.log"
    rm -rf "$root"
}
trap cleanup EXIT
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# wait_json DIR PID: waits for DIR/node.json to name an HTTP address.
wait_json() {
    local i
    for ((i = 0; i < 60000; i++)); do
        [[ -s $1/node.json ]] && [[ -n $(jq -r '.http // empty' "$1/node.json" 2>/dev/null) ]] && return 0
        kill -0 "$2" 2>/dev/null || { tail -5 "$1/node.log" >&2; exit 1; }
        sleep 0.01
    done
    echo "no node.json in $1" >&2
    exit 1
}
# Read with a bash pattern, not jq: at 20 polls a second, starting jq each
# time took most of a core from the nodes measured.
records() {
    local j
    j=$(curl -sf -m 5 "http://$1/api/v1/node" 2>/dev/null) || true
    [[ $j =~ \"records\":([0-9]+) ]] && echo "${BASH_REMATCH[1]}" || echo 0
}

if [[ -n ${SEEDED:-} ]]; then
    [[ -d $SEEDED/db ]] || { echo "SEEDED=$SEEDED holds no db" >&2; exit 2; }
    cp -a "$SEEDED" "$root/A"
    rm -f "$root/A/node.json"
else
    "$bin" seed-history --results "$n" --data-dir "$root/A" >/dev/null
fi
"$bin" node --data-dir "$root/A" --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --sandbox none \
    >"$root/A/node.log" 2>&1 </dev/null &
pid_a=$!
wait_json "$root/A" "$pid_a"
http_a=$(jq -r .http "$root/A/node.json")
boot=$(jq -r '.listen[0]' "$root/A/node.json")
cluster=$("$bin" cluster id --data-dir "$root/A")
# A publishes its own admission record at start: wait until it is stored.
want=$((2 * n + 1))
for ((i = 0; i < 6000; i++)); do
    [[ $(records "$http_a") -ge $want ]] && break
    sleep 0.01
done
want=$(records "$http_a")
echo "A holds $want records ($n results); $(du -sk "$root/A/db" | cut -f1) kB on disk"

times=() rsss=() peaks=()
for ((r = 1; r <= runs; r++)); do
    b=$root/B$r
    mkdir -p "$b"
    id=$("$bin" id --data-dir "$b")
    "$bin" cluster admit --data-dir "$root/A" "$id" >"$b.admission"
    start=$(date +%s.%N)
    "$bin" node --data-dir "$b" --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --sandbox none \
        --bootstrap "$boot" --cluster "$cluster" --admission "$b.admission" >"$b/node.log" 2>&1 </dev/null &
    pid_b=$!
    wait_json "$b" "$pid_b"
    http_b=$(jq -r .http "$b/node.json")
    # Polled every 100 ms (about 10 ms of CPU each, curl's start most of
    # it): the figure is at most that late.
    for ((i = 0; i < 12000; i++)); do # 20 min at most
        [[ $(records "$http_b") -ge $want ]] && break
        kill -0 "$pid_b" 2>/dev/null || { tail -5 "$b/node.log" >&2; exit 1; }
        sleep 0.1
    done
    took=$(echo "$(date +%s.%N) - $start" | bc)
    [[ $(records "$http_b") -ge $want ]] || { echo "B did not catch up within 20 min" >&2; exit 1; }
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid_b/status")
    peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid_b/status")
    kill "$pid_b"
    wait "$pid_b" 2>/dev/null || true
    pid_b=
    [[ -n ${LOGS:-} ]] && mkdir -p "$LOGS" && cp "$b/node.log" "$LOGS/B$r.log"
    rm -rf "$b"
    printf 'run %d: caught up %d records in %.1f s (%.0f records/s); RSS %d MiB, peak %d MiB\n' \
        "$r" "$want" "$took" "$(echo "$want / $took" | bc -l)" $((rss / 1024)) $((peak / 1024))
    times+=("$took") rsss+=("$rss") peaks+=("$peak")
done
t=$(median "${times[@]}")
printf 'median of %d: caught up %d results (%d records) in %.1f s; RSS %d MiB, peak %d MiB\n' \
    "$runs" "$n" "$want" "$t" $(($(median "${rsss[@]}") / 1024)) $(($(median "${peaks[@]}") / 1024))
