#!/usr/bin/env bash
# Build throughput and change-to-result latency of a two-node cluster.
#
#   bench/throughput.sh [--changes N] [--runs R] [--sandbox MODE] [--figures FILE]
#
# Each run makes a fresh git repository whose .peerbot.toml has one builder
# ("noop", one step running `true`, collapse = false) and N + 2 commits, and
# starts two nodes (A, and B admitted by A; one executor each, loopback,
# ports chosen by the OS, the repository allowed with --allow-repo). Once
# both see the other live it announces the first commit to A and waits for
# its result (a node claims nothing in its first seconds, see warmup_ms in
# protocol/src/core/config.rs; this keeps that wait out of the figures).
# Then it announces the next N commits to A, one POST /api/v1/changes each
# (what `peerbot announce` sends), and polls A's /api/v1/builds until A
# serves their N results: builds/s is N over the time from the first of
# these announces. Then it announces one more commit and polls both
# nodes for its result: the latency until A serves it and until both do.
# Last, the median of 20 requests of A's builds?limit=50 and
# changes?limit=50, and each node's resident memory (VmRSS) and peak
# (VmHWM). Prints each run and the medians of the runs.
#
# Options (or environment):
#   --changes N     (CHANGES)  no-op changes per run, default 200
#   --runs R        (RUNS)     runs, default 3
#   --sandbox MODE  (SANDBOX)  the nodes' --sandbox: auto (default), bwrap, none
#   --figures FILE             also write the medians to FILE, "key value" lines
#   PEERBOT=path               the binary; default: cargo build --release -p
#                              peerbot, then $CARGO_TARGET_DIR/release/peerbot
#   NODE_ARGS="..."            more flags for both nodes (split on spaces),
#                              e.g. NODE_ARGS="--claim-stagger-ms 500"
#   KEEP=1                     keep the temporary directory (node logs)
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

changes=${CHANGES:-200}
runs=${RUNS:-3}
sandbox=${SANDBOX:-auto}
figures=
while [[ $# -gt 0 ]]; do
    case $1 in
        --changes) changes=${2:?--changes needs a number}; shift 2 ;;
        --runs) runs=${2:?--runs needs a number}; shift 2 ;;
        --sandbox) sandbox=${2:?--sandbox needs a mode}; shift 2 ;;
        --figures) figures=${2:?--figures needs a file}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $changes =~ ^[1-9][0-9]*$ && $runs =~ ^[1-9][0-9]*$ ]] || { echo "--changes and --runs take positive numbers" >&2; exit 2; }
for tool in git curl jq awk; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PEERBOT:-} ]]; then
    echo "building: cargo build --release -p peerbot" >&2
    (cd "$repo_root" && cargo build --release -p peerbot >&2)
    PEERBOT=${CARGO_TARGET_DIR:-$repo_root/target}/release/peerbot
fi
[[ -x $PEERBOT ]] || { echo "no peerbot binary at $PEERBOT" >&2; exit 1; }

# Settings meant for a real node must not leak into the bench nodes.
unset PEERBOT_DATA_DIR PEERBOT_HTTP PEERBOT_LISTEN PEERBOT_BOOTSTRAP PEERBOT_WATCH PEERBOT_LABEL \
    PEERBOT_ALLOW_REPO PEERBOT_EXECUTORS PEERBOT_CLUSTER PEERBOT_ADMISSION PEERBOT_API_TOKEN \
    PEERBOT_API_TOKEN_FILE PEERBOT_SANDBOX PEERBOT_WORK_DIR

bench_root peerbot-throughput

ms_since() { echo $((($(now_us) - $1) / 1000)); }
die() {
    echo "$*" >&2
    local d
    for d in "${run_dir:-}"/A "${run_dir:-}"/B; do
        [[ -f $d/node.log ]] && { echo "--- end of $d/node.log" >&2; tail -n 15 "$d/node.log" >&2; }
    done
    exit 1
}

# start NAME ARGS...: a node in $run_dir/NAME; waits for its node.json and
# sets url_NAME and pid_NAME.
start_node() {
    local name=$1 dir=$run_dir/$1
    shift
    mkdir -p "$dir"
    "$PEERBOT" node --data-dir "$dir" --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 \
        --executors 1 --sandbox "$sandbox" ${NODE_ARGS:-} "$@" >"$dir/node.log" 2>&1 </dev/null &
    local pid=$! i http=
    pids+=("$pid")
    for ((i = 0; i < 1200; i++)); do # 60 s
        if [[ -s $dir/node.json ]]; then
            http=$(jq -r '.http // empty' "$dir/node.json" 2>/dev/null || true)
            [[ -n $http ]] && break
        fi
        kill -0 "$pid" 2>/dev/null || die "node $name exited during start-up"
        sleep 0.05
    done
    [[ -n $http ]] || die "node $name wrote no node.json within 60 s"
    [[ $http == http* ]] || http=http://$http
    printf -v "url_$name" '%s' "$http"
    printf -v "pid_$name" '%s' "$pid"
}

# sees URL PEER_ID: the node at URL counts PEER_ID live and connected.
sees() {
    curl -sf -m 10 "$1/api/v1/peers" | jq -e --arg p "$2" 'any(.[]; .peer_id == $p and .live and .connected)' >/dev/null
}

# count_results URL: the results URL serves (following X-Next-Before).
count_results() {
    local url=$1 total=0 before= page hdr next n
    while :; do
        hdr=$run_dir/count.hdr
        page=$(curl -sf -m 10 -D "$hdr" "$url/api/v1/builds?limit=1000${before:+&before=$before}") || { echo -1; return; }
        n=$(jq length <<<"$page")
        total=$((total + n))
        next=$(awk 'tolower($1) == "x-next-before:" {print $2}' "$hdr" | tr -d '\r')
        [[ -n $next && $n -gt 0 ]] || break
        before=$next
    done
    echo "$total"
}

# serves URL COMMIT: the node at URL serves a result for COMMIT.
serves() { [[ $(curl -sf -m 10 "$1/api/v1/builds?commit=$2&limit=1") == *'"commit"'* ]]; }

announce() {
    local body code
    body=$(printf '{"repo":"%s","branch":"main","commit":"%s"}' "$repo" "$1")
    code=$(curl -s -o "$run_dir/announce.out" -w '%{http_code}' -X POST \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data "$body" "$url_A/api/v1/changes") || true
    [[ $code == 201 ]] || die "announcing $1: HTTP $code $(cat "$run_dir/announce.out")"
}

api_median_ms() {
    local url=$1 times=() i
    curl -sf -o /dev/null "$url" || die "request failed: $url"
    for ((i = 0; i < 20; i++)); do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' "$url")")
    done
    median "${times[@]}" | awk '{printf "%.1f", $1 * 1000}'
}

rss_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

echo "peerbot: $PEERBOT; $changes changes, $runs runs, sandbox $sandbox, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
all_rate=() all_lat_a=() all_lat_both=() all_b50=() all_c50=() all_rss_a=() all_rss_b=() all_hwm_a=() all_hwm_b=()
for ((r = 1; r <= runs; r++)); do
    run_dir=$root/run$r
    repo=$run_dir/repo
    mkdir -p "$repo"
    git -C "$repo" init -q -b main
    git -C "$repo" config user.email bench@example.invalid
    git -C "$repo" config user.name bench
    cat >"$repo/.peerbot.toml" <<'EOF'
[[builder]]
name = "noop"
collapse = false
[[builder.step]]
name = "true"
run = "true"
EOF
    git -C "$repo" add .peerbot.toml
    git -C "$repo" commit -q -m "change 1"
    for ((i = 2; i <= changes + 2; i++)); do
        git -C "$repo" commit -q --allow-empty -m "change $i"
    done
    mapfile -t commits < <(git -C "$repo" rev-list --reverse main)
    repo=$(cd "$repo" && pwd -P)

    pids=()
    start_node A --allow-repo "$repo"
    mkdir -p "$run_dir/B"
    "$PEERBOT" cluster admit --data-dir "$run_dir/A" "$("$PEERBOT" id --data-dir "$run_dir/B")" >"$run_dir/B.cert"
    start_node B --cluster "$("$PEERBOT" cluster id --data-dir "$run_dir/A")" --admission "$run_dir/B.cert" \
        --bootstrap "$(jq -r '.listen[0]' "$run_dir/A/node.json")" --allow-repo "$repo"
    id_A=$(jq -r .peer_id "$run_dir/A/node.json")
    id_B=$(jq -r .peer_id "$run_dir/B/node.json")
    for ((i = 0; i < 1200; i++)); do # 60 s
        sees "$url_A" "$id_B" && sees "$url_B" "$id_A" && break
        sleep 0.05
    done
    ((i < 1200)) || die "A and B did not see each other live within 60 s"
    token=$(cat "$run_dir/A/api.token")

    # Warm-up: the first commit, until A serves its result.
    t0=$(now_us)
    announce "${commits[0]}"
    while ! serves "$url_A" "${commits[0]}"; do
        (($(now_us) - t0 < 120000000)) || die "the first result was not served within 120 s"
        kill -0 "$pid_A" 2>/dev/null && kill -0 "$pid_B" 2>/dev/null || die "a node exited"
        sleep 0.05
    done
    warm_ms=$(ms_since "$t0")

    # Throughput: the next N commits, announced to A one by one.
    t0=$(now_us)
    for ((i = 1; i <= changes; i++)); do announce "${commits[$i]}"; done
    announce_ms=$(ms_since "$t0")
    bound_us=$(((120 + changes) * 1000000))
    while :; do
        n=$(($(count_results "$url_A") - 1))
        ((n >= changes)) && break
        (($(now_us) - t0 < bound_us)) || die "A serves $n of $changes results after $((bound_us / 1000000)) s"
        kill -0 "$pid_A" 2>/dev/null && kill -0 "$pid_B" 2>/dev/null || die "a node exited"
        sleep 0.1
    done
    total_ms=$(ms_since "$t0")
    rate=$(awk -v n="$changes" -v ms="$total_ms" 'BEGIN {printf "%.2f", n * 1000 / ms}')
    failed=$(curl -sf "$url_A/api/v1/builds?limit=1000" | jq '[.[] | select(.status != "success")] | length') || die "listing A's results failed"
    by_b=$(curl -sf "$url_A/api/v1/builds?limit=1000&signer=$id_B" | jq length) || die "listing A's results failed"

    # Latency: one more commit, until A serves its result, then until both do.
    last=${commits[$((changes + 1))]}
    t0=$(now_us)
    announce "$last"
    lat_a= lat_b=
    while [[ -z $lat_a || -z $lat_b ]]; do
        [[ -z $lat_a ]] && serves "$url_A" "$last" && lat_a=$(ms_since "$t0")
        [[ -z $lat_b ]] && serves "$url_B" "$last" && lat_b=$(ms_since "$t0")
        (($(now_us) - t0 < 120000000)) || die "the result of $last was not served by both nodes within 120 s"
        sleep 0.01
    done
    lat_both=$((lat_a > lat_b ? lat_a : lat_b))

    b50=$(api_median_ms "$url_A/api/v1/builds?limit=50")
    c50=$(api_median_ms "$url_A/api/v1/changes?limit=50")
    rss_a=$(rss_kib "$pid_A" VmRSS) hwm_a=$(rss_kib "$pid_A" VmHWM)
    rss_b=$(rss_kib "$pid_B" VmRSS) hwm_b=$(rss_kib "$pid_B" VmHWM)
    echo "run $r: first result after $warm_ms ms; $changes results on A in $total_ms ms ($rate builds/s;" \
        "announcing took $announce_ms ms; $by_b of all built by B; $failed not success); one change: A ${lat_a} ms, B ${lat_b} ms;" \
        "builds?limit=50 $b50 ms, changes?limit=50 $c50 ms; RSS A $((rss_a / 1024)) MiB (peak $((hwm_a / 1024))), B $((rss_b / 1024)) MiB (peak $((hwm_b / 1024)))"
    all_rate+=("$rate") all_lat_a+=("$lat_a") all_lat_both+=("$lat_both") all_b50+=("$b50") all_c50+=("$c50")
    all_rss_a+=("$rss_a") all_rss_b+=("$rss_b") all_hwm_a+=("$hwm_a") all_hwm_b+=("$hwm_b")

    stop "$pid_A" "$pid_B"
    pids=()
    [[ ${KEEP:-0} == 1 ]] || rm -rf "$run_dir"
done

m_rate=$(median "${all_rate[@]}") m_lat_a=$(median "${all_lat_a[@]}") m_lat_both=$(median "${all_lat_both[@]}")
m_b50=$(median "${all_b50[@]}") m_c50=$(median "${all_c50[@]}")
m_rss_a=$(median "${all_rss_a[@]}") m_rss_b=$(median "${all_rss_b[@]}")
m_hwm_a=$(median "${all_hwm_a[@]}") m_hwm_b=$(median "${all_hwm_b[@]}")
echo
echo "median of $runs runs:"
printf '%-44s %10s\n' "figure" "peerbot"
printf '%-44s %10s\n' "builds/s ($changes no-op, 2x1)" "$m_rate"
printf '%-44s %10s\n' "latency announce -> result on A (ms)" "$m_lat_a"
printf '%-44s %10s\n' "latency announce -> result on A and B (ms)" "$m_lat_both"
printf '%-44s %10s\n' "builds?limit=50 on A (ms)" "$m_b50"
printf '%-44s %10s\n' "changes?limit=50 on A (ms)" "$m_c50"
printf '%-44s %10s\n' "RSS A at end (MiB)" "$((m_rss_a / 1024))"
printf '%-44s %10s\n' "RSS B at end (MiB)" "$((m_rss_b / 1024))"
printf '%-44s %10s\n' "peak RSS A (MiB)" "$((m_hwm_a / 1024))"
printf '%-44s %10s\n' "peak RSS B (MiB)" "$((m_hwm_b / 1024))"
if [[ -n $figures ]]; then
    cat >"$figures" <<EOF
changes $changes
runs $runs
builds_per_s $m_rate
latency_first_ms $m_lat_a
latency_both_ms $m_lat_both
builds50_ms $m_b50
changes50_ms $m_c50
rss_a_kib $m_rss_a
rss_b_kib $m_rss_b
EOF
fi
