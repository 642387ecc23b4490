#!/usr/bin/env bash
# Every performance goal, measured on this machine, next to its goal.
#
#   bench/goals.sh [--runs R] [--report DIR]
#
# Seeds a node directory with a million synthetic results (`peerbot
# seed-history`, each result with its change), starts a node on it once
# and stops it (so that it holds a checkpoint, as any node that was
# stopped does), then runs, on copies of it:
#   bench/startup.sh 1000000 R       resident memory and time to ready
#   bench/api-queries.sh 1000000     every filter of the API, builds?limit=50
#   the record_size example          bytes per build before compression
#                                    (of the records this checkout signs)
#   bench/throughput.sh --runs R     builds/s and latency of two nodes
#   bench/buildbot.sh --runs R       the same workload on Buildbot 4.3
#   bench/catchup.sh 100000 R        a fresh node catching up 100k results
#   bench/catchup.sh 1000000 R       and a million
# and prints one table: each figure's median, its goal, and whether it is
# met. Exits 1 if a goal is missed, 2 on bad arguments. About 15 minutes
# on 2 cores; the first run also installs Buildbot into a virtualenv (see
# bench/buildbot.sh).
#
# Options (or environment):
#   --runs R     (RUNS)     runs of each benchmark, default 3
#   --report DIR            run nothing: print the table from the outputs a
#                           run kept (KEEP=1) in DIR (the directory it kept,
#                           or its out/)
#   SEEDED=DIR              a stopped node's directory holding the million
#                           results already (copied, never changed)
#   PEERBOT=path            the binary; default: cargo build --release -p
#                           peerbot, then $CARGO_TARGET_DIR/release/peerbot
#   KEEP=1                  keep the temporary directories (outputs, logs;
#                           the throughput and Buildbot runs' too)
# The other benchmarks' own settings (CHANGES, SANDBOX, NODE_ARGS, STOP,
# TAIL, LOGS, DATA_DIR) are not passed on: each runs with its defaults.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

runs=${RUNS:-3}
report=
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) runs=${2:?--runs needs a number}; shift 2 ;;
        --report) report=${2:?--report needs a directory}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "--runs takes a positive number" >&2; exit 2; }
for tool in curl jq bc awk python3 git cargo; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
run_all() {
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    repo_root=$(cd "$here/.." && pwd)
    if [[ -z ${PEERBOT:-} ]]; then
        echo "building: cargo build --release -p peerbot" >&2
        (cd "$repo_root" && cargo build --release -p peerbot >&2)
        PEERBOT=${CARGO_TARGET_DIR:-$repo_root/target}/release/peerbot
    fi
    [[ -x $PEERBOT ]] || { echo "no peerbot binary at $PEERBOT" >&2; exit 1; }
    export PEERBOT PEERBOT_BIN=$PEERBOT
    unset CHANGES SANDBOX NODE_ARGS STOP TAIL LOGS DATA_DIR RUNS
    unset PEERBOT_DATA_DIR PEERBOT_HTTP PEERBOT_LISTEN PEERBOT_BOOTSTRAP PEERBOT_WATCH PEERBOT_LABEL \
        PEERBOT_ALLOW_REPO PEERBOT_CLUSTER PEERBOT_ADMISSION PEERBOT_SANDBOX

    bench_root peerbot-goals
    out=$root/out
    mkdir -p "$out"
    n=1000000

    # The million-result directory: seeded, started once, stopped cleanly.
    if [[ -n ${SEEDED:-} ]]; then
        [[ -d $SEEDED/db ]] || { echo "SEEDED=$SEEDED holds no db" >&2; exit 2; }
        seeded=$SEEDED
        # Passed on only where meant: the 100k catch-up seeds its own.
        unset SEEDED
    else
        seeded=$root/1m
        echo "seeding $n results (about 1.5 minutes) ..."
        "$PEERBOT" seed-history --results "$n" --data-dir "$seeded" >/dev/null
        "$PEERBOT" node --data-dir "$seeded" --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 \
            --sandbox none >"$root/first-start.log" 2>&1 </dev/null &
        pids=("$!")
        for ((i = 0; i < 6000; i++)); do # 10 min: the first start reads the whole history
            [[ -s $seeded/node.json ]] && break
            kill -0 "${pids[0]}" 2>/dev/null || { tail -5 "$root/first-start.log" >&2; exit 1; }
            sleep 0.1
        done
        [[ -s $seeded/node.json ]] || { echo "the seeded node did not start within 10 minutes" >&2; exit 1; }
        stop "${pids[0]}"
        pids=()
    fi

    # step NAME COMMAND...: runs a benchmark, its output shown and kept.
    step() {
        local name=$1
        shift
        echo
        echo "== $name: $*"
        if ! "$@" 2>&1 | tee "$out/$name"; then
            echo "$name failed" >&2
            exit 1
        fi
    }

    step startup env SEEDED="$seeded" bash "$here/startup.sh" "$n" "$runs"
    cp -a "$seeded" "$root/queries"
    step queries env DATA_DIR="$root/queries" RUNS=21 bash "$here/api-queries.sh" "$n"
    rm -rf "$root/queries"
    step size bash -c 'cd "$1" && cargo run -q --release -p peerbot-protocol --example record_size' _ "$repo_root"
    step throughput bash "$here/throughput.sh" --runs "$runs" --figures "$out/peerbot.figures"
    step buildbot bash "$here/buildbot.sh" --runs "$runs" --peerbot-figures "$out/peerbot.figures" \
        --figures "$out/buildbot.figures"
    step catchup100k bash "$here/catchup.sh" 100000 "$runs"
    step catchup1m env SEEDED="$seeded" bash "$here/catchup.sh" "$n" "$runs"

}

if [[ -n $report ]]; then
    # The directory a kept run names, or its out/ directory.
    [[ -f $report/out/startup ]] && report=$report/out
    [[ -f $report/startup && -f $report/catchup1m ]] || { echo "--report $report: no kept outputs there" >&2; exit 2; }
    out=$report
    runs=$(sed -nE 's/^median of ([0-9]+): caught up.*/\1/p' "$out/catchup1m")
    PEERBOT=$(sed -nE 's/^node up at .* \((.*)\)$/\1/p' "$out/queries")
else
    run_all
fi

# figure FILE KEY: a "key value" line's value.
figure() { awk -v k="$2" '$1 == k {print $2}' "$1"; }
# The medians, read from what each benchmark printed.
rss=$(sed -nE 's/^median of .*RSS ([0-9]+) MiB.*/\1/p' "$out/startup")
ready=$(sed -nE 's/^median of .*ready in ([0-9.]+) s.*/\1/p' "$out/startup")
b50=$(awk '$1 == "/api/v1/builds?limit=50" {print $2}' "$out/queries")
# Every filtered query of the API: the lists asked with a filter (not the
# two unfiltered ones, nor the dashboard's console and waterfall).
filtered='$1 ~ /^\/api\/v1\/(builds|changes|jobs)\?/ && $1 != "/api/v1/builds?limit=50" && $1 != "/api/v1/changes?limit=50"'
filters=$(awk "$filtered {print \$2}" "$out/queries" | sort -g | tail -1)
worst=$(awk -v t="$filters" "$filtered && \$2 == t {print \$1; exit}" "$out/queries")
bytes=$(sed -nE 's/^per build +([0-9]+) bytes.*/\1/p' "$out/size")
rate=$(figure "$out/peerbot.figures" builds_per_s)
bb_rate=$(figure "$out/buildbot.figures" builds_per_s)
ratio=
[[ -n $rate && -n $bb_rate ]] && ratio=$(awk -v p="$rate" -v b="$bb_rate" 'BEGIN {if (b > 0) print p / b}')
latency=$(figure "$out/peerbot.figures" latency_both_ms)
c100k=$(sed -nE 's/^median of .* in ([0-9.]+) s;.*/\1/p' "$out/catchup100k")
c1m=$(sed -nE 's/^median of .* in ([0-9.]+) s;.*/\1/p' "$out/catchup1m")

missed=0
# row FIGURE VALUE GOAL-TEXT AWK-TEST [FORMAT]: the test sees the value as
# v, unrounded; FORMAT (printf) only rounds what is shown.
row() {
    local met=no shown=?
    if [[ -n $2 ]] && awk -v v="$2" "BEGIN {exit !($4)}"; then met=yes; else missed=$((missed + 1)); fi
    [[ -n $2 ]] && shown=$(awk -v v="$2" -v f="${5:-%s}" 'BEGIN {printf f, v}')
    printf '%-52s %12s  %-26s %s\n' "$1" "$shown" "$3" "$met"
}
echo
echo "$("$PEERBOT" --version 2>/dev/null || echo peerbot) ($PEERBOT); $(nproc) cores; medians of $runs runs" \
    "(API queries: of 21 requests)"
[[ -n $report ]] && echo "(from the outputs kept in $report)"
printf '%-52s %12s  %-26s %s\n' figure measured goal met
row "RSS after start, 1M results (MiB)" "$rss" "<= 64" "v <= 64"
row "start-up, 1M results (s)" "$ready" "<= 1" "v <= 1" "%.2f"
row "slowest API filter, 1M results (ms)" "$filters" "<= 5 (p50)" "v <= 5"
row "builds?limit=50, 1M results (ms)" "$b50" "<= 1" "v <= 1"
row "bytes per build before compression" "$bytes" "< 1500" "v < 1500"
row "builds/s, 200 no-op changes, 2 nodes x 1" "$rate" ">= 40" "v >= 40"
row "  against Buildbot 4.3 (${bb_rate:-?} builds/s) (x)" "$ratio" ">= 10" "v >= 10" "%.1f"
row "announce -> result on both nodes (ms)" "$latency" "<= 100" "v <= 100"
row "fresh node catches up 100k results (s)" "$c100k" "< 10" "v < 10"
row "fresh node catches up 1M results (s)" "$c1m" "< 100" "v < 100"
echo "(slowest filter: $worst)"
if ((missed > 0)); then
    echo "$missed goal(s) missed"
    exit 1
fi
echo "every goal met"
