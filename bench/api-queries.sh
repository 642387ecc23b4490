#!/usr/bin/env bash
# Median latency of the history API's list queries, and of the dashboard's
# pages, over N seeded results.
#
#   bench/api-queries.sh [N]        (default 100000)
#
# PEERBOT=path/to/peerbot picks the binary (default: target/release/peerbot,
# then peerbot on PATH). DATA_DIR=dir reuses (or keeps) a seeded node
# directory: seeding is skipped when it already holds a database, so two
# binaries can be compared on the same history. RUNS=21 requests per query.
set -euo pipefail

N=${1:-100000}
RUNS=${RUNS:-21}
here=$(cd "$(dirname "$0")/.." && pwd)
PEERBOT=${PEERBOT:-}
if [[ -z $PEERBOT ]]; then
    for p in "${CARGO_TARGET_DIR:-$here/target}/release/peerbot" "$(command -v peerbot || true)"; do
        if [[ -n $p && -x $p ]]; then PEERBOT=$p; break; fi
    done
fi
[[ -x ${PEERBOT:-} ]] || { echo "no peerbot binary: build with cargo build --release or set PEERBOT" >&2; exit 1; }

keep=1
if [[ -z ${DATA_DIR:-} ]]; then
    DATA_DIR=$(mktemp -d -t peerbot-bench.XXXXXX)
    keep=0
fi
node_pid=
cleanup() {
    if [[ -n $node_pid ]]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
    if [[ $keep == 0 ]]; then rm -rf "$DATA_DIR"; fi
}
trap cleanup EXIT

if [[ ! -d $DATA_DIR/db ]]; then
    echo "seeding $N results into $DATA_DIR ..."
    t0=$(date +%s.%N)
    "$PEERBOT" seed-history --results "$N" --data-dir "$DATA_DIR" >/dev/null
    echo "seeded in $(echo "$(date +%s.%N) - $t0" | bc) s"
fi

rm -f "$DATA_DIR/node.json"
t0=$(date +%s.%N)
"$PEERBOT" node --data-dir "$DATA_DIR" --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 \
    >"$DATA_DIR/bench-node.log" 2>&1 &
node_pid=$!
http=
for _ in $(seq 1 6000); do
    if [[ -s $DATA_DIR/node.json ]]; then
        http=$(jq -r '.http // empty' "$DATA_DIR/node.json" 2>/dev/null || true)
        [[ -n $http ]] && break
    fi
    kill -0 "$node_pid" 2>/dev/null || { echo "node exited:" >&2; tail -20 "$DATA_DIR/bench-node.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $http ]] || { echo "node did not write node.json" >&2; exit 1; }
[[ $http == http* ]] || http="http://$http"
echo "node up at $http after $(echo "$(date +%s.%N) - $t0" | bc) s ($PEERBOT)"

# Commit i (from 1) of the synthetic history is i in 40 hex digits: this
# prefix matches 16 commits in the middle of it.
mid=$(printf '%040x' $((N / 2)))
prefix=${mid:0:39}

# median PATH [KIND]: KIND "page" counts the bytes of an HTML page
# instead of the items of a JSON list.
median() {
    local path=$1 kind=${2:-list} times=() n
    curl -sf -o /dev/null "$http$path" || { echo "request failed: $path" >&2; exit 1; }
    for _ in $(seq 1 "$RUNS"); do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' "$http$path")")
    done
    if [[ $kind == page ]]; then
        n="$(curl -s "$http$path" | wc -c) bytes"
    else
        n="$(curl -s "$http$path" | jq length) items"
    fi
    printf '%-55s %9.2f ms  (%s)\n' "$path" \
        "$(printf '%s\n' "${times[@]}" | sort -g | sed -n "$(((RUNS + 1) / 2))p" | awk '{print $1 * 1000}')" "$n"
}

# Every filter of the two lists, each once matching the whole synthetic
# history (one repo, branch, builder, status and signer) and once nothing.
repo=bench://synthetic
signer=$(jq -r .peer_id "$DATA_DIR/node.json")
nobody=12D3KooWGzBQ8cVR7G3X3wD8RktzVKr6YXdrVyDR8Xyhc5VXqkQp
echo "median of $RUNS requests, $N results:"
median "/api/v1/builds?limit=50"
median "/api/v1/builds?builder=unit&limit=50"
median "/api/v1/builds?builder=nomatch&limit=50"
median "/api/v1/builds?repo=$repo&limit=50"
median "/api/v1/builds?repo=$repo&branch=main&limit=50"
median "/api/v1/builds?repo=$repo&branch=nomatch&limit=50"
median "/api/v1/builds?status=success&limit=50"
median "/api/v1/builds?status=failure&limit=50"
median "/api/v1/builds?signer=$signer&limit=50"
median "/api/v1/builds?signer=$nobody&limit=50"
median "/api/v1/builds?commit=$prefix&limit=50"
median "/api/v1/changes?limit=50"
median "/api/v1/changes?repo=$repo&limit=50"
median "/api/v1/changes?repo=$repo&branch=nomatch&limit=50"
median "/api/v1/changes?commit=$prefix&limit=50"
# Jobs by state: finished ones from the store's index (every seeded job is
# done, none cancelled or superseded), open ones from the core.
median "/api/v1/jobs?state=done&limit=50"
next=$(curl -sD - -o /dev/null "$http/api/v1/jobs?state=done&limit=50" | tr -d '\r' | awk 'tolower($1) == "x-next-before:" {print $2}')
median "/api/v1/jobs?state=done&limit=50&before=$next"
median "/api/v1/jobs?state=cancelled&limit=50"
median "/api/v1/jobs?state=superseded&limit=50"
median "/api/v1/jobs?state=pending&limit=50"
# The dashboard's pages and their JSON twins: the console shows 30
# commits, the waterfall 50 builds, a builder page 100 builds with charts.
median "/" page
median "/api/v1/console" page
median "/waterfall" page
median "/api/v1/waterfall" page
median "/builders/unit" page
median "/nodes" page
