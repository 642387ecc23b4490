#!/usr/bin/env bash
# Start-up time and memory of a node holding N synthetic results.
#
#   bench/startup.sh [N] [RUNS]      (defaults: 100000 results, 3 runs)
#
# Seeds a stopped node's store with `peerbot seed-history --results N`
# (N results and their N changes), then starts the node RUNS times on it,
# each time measuring the seconds until it writes node.json (ready: store
# opened, history replayed, ports bound), and its resident memory (VmRSS)
# and peak (VmHWM) 2 s later. Prints each run and the medians. Loopback
# only, ports chosen by the OS; every node it starts is stopped.
#
# STOP=kill stops each run with SIGKILL (a crash) instead of SIGTERM (a
# clean stop), and STOP=both alternates, starting with a clean stop. The
# first run reads the seeded records in any case, then saves a checkpoint.
# TAIL=M seeds M more results before each later run, as records that
# arrived after the checkpoint (what a crash leaves to read again).
# SEEDED=DIR copies the node's directory from DIR (a stopped node's
# directory holding N seeded results) instead of seeding it again.
set -euo pipefail
n=${1:-100000}
runs=${2:-3}
stop=${STOP:-term}
[[ $stop == term || $stop == kill || $stop == both ]] || { echo "STOP must be term, kill or both" >&2; exit 2; }
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${PEERBOT_BIN:-${CARGO_TARGET_DIR:-$script_dir/../target}/release/peerbot}
[[ -x $bin ]] || { echo "no peerbot at $bin: cargo build --release -p peerbot, or set PEERBOT_BIN" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/peerbot-bench.XXXXXX")
pid=
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
seed_start=$(date +%s.%N)
if [[ -n ${SEEDED:-} ]]; then
    [[ -d $SEEDED/db ]] || { echo "SEEDED=$SEEDED holds no db" >&2; exit 2; }
    cp -a "$SEEDED" "$dir/data"
    rm -f "$dir/data/node.json"
else
    "$bin" seed-history --results "$n" --data-dir "$dir/data" >/dev/null
fi
echo "seeded $n results in $(echo "$(date +%s.%N) - $seed_start" | bc) s; $(du -sk "$dir/data/db" | cut -f1) kB on disk"
readies=() rsss=() peaks=()
tail_n=${TAIL:-0}
[[ $tail_n =~ ^[0-9]+$ ]] || { echo "TAIL must be a number" >&2; exit 2; }
for ((r = 1; r <= runs; r++)); do
    if ((r > 1 && tail_n > 0)); then
        "$bin" seed-history --results "$tail_n" --data-dir "$dir/data" >/dev/null
    fi
    rm -f "$dir/data/node.json"
    start=$(date +%s.%N)
    "$bin" node --data-dir "$dir/data" --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 \
        --sandbox none >"$dir/node.log" 2>&1 </dev/null &
    pid=$!
    for ((i = 0; i < 60000; i++)); do
        [[ -s $dir/data/node.json ]] && break
        kill -0 "$pid" 2>/dev/null || { tail -5 "$dir/node.log" >&2; exit 1; }
        sleep 0.01
    done
    ready=$(echo "$(date +%s.%N) - $start" | bc)
    sleep 2
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    http=$(jq -r '.http // empty' "$dir/data/node.json")
    [[ $http == http* ]] || http="http://$http"
    records=$(curl -sf "$http/api/v1/node" | jq -c '.startup' || true)
    signal=TERM
    if [[ $stop == kill || ($stop == both && $((r % 2)) == 0) ]]; then signal=KILL; fi
    kill -s "$signal" "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
    echo "run $r: ready in $ready s, RSS $((rss / 1024)) MiB, peak $((peak / 1024)) MiB, startup $records; stopped by SIG$signal"
    readies+=("$ready") rsss+=("$rss") peaks+=("$peak")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo "median of $runs: ready in $(median "${readies[@]}") s, RSS $(($(median "${rsss[@]}") / 1024)) MiB, peak $(($(median "${peaks[@]}") / 1024)) MiB ($n results)"
