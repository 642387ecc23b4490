#!/usr/bin/env bash
# The workload of bench/throughput.sh run by Buildbot 4.3, for comparison.
#
#   bench/buildbot.sh [--changes N] [--runs R] [--peerbot | --peerbot-figures FILE] [--figures FILE]
#
# Installs buildbot, buildbot-worker and buildbot-www 4.3 in a virtualenv
# under ${XDG_CACHE_HOME:-~/.cache}/peerbot/buildbot-venv (once; the
# master's REST API at /api/v2 is served by its www service, which does
# not start without buildbot-www). Each run makes a fresh master (sqlite,
# the default) with two workers of max_builds=1 on loopback (ports chosen
# by the OS), one builder running the single step ShellCommand(["true"])
# on either worker with collapseRequests=False, an AnyBranchScheduler
# without a tree-stable timer (every change is built) and a PB change
# source. Then, as for peerbot:
#   - one warm-up change, until its build completes;
#   - N changes sent in one Python process with buildbot's own client
#     (buildbot.clients.sendchange.Sender, what `buildbot sendchange` uses,
#     so that N interpreter start-ups are not counted), polling
#     /api/v2/builds?complete=true until N more builds are complete:
#     builds/s is N over the time from the first send;
#   - one more change sent the same way, until its build completes (latency);
#   - one more with the `buildbot sendchange` command, timed from its start
#     (latency with the command's start-up);
#   - the median of 20 requests of builds?limit=50 and changes?limit=50;
#   - the master's and the workers' resident memory (VmRSS) and peak (VmHWM).
# Prints each run and the medians of the runs. With --peerbot it also runs
# bench/throughput.sh with the same N and R (or reads its --figures output
# with --peerbot-figures FILE) and prints both side by side.
#
# Options (or environment):
#   --changes N     (CHANGES)        changes per run, default 200
#   --runs R        (RUNS)           runs, default 3
#   --peerbot                        also run bench/throughput.sh (PEERBOT= as there)
#   --peerbot-figures FILE           take peerbot's figures from FILE instead
#   --figures FILE                   also write Buildbot's medians to FILE, "key value" lines
#   BUILDBOT_VENV=dir                the virtualenv (made when missing)
#   KEEP=1                           keep the temporary directory (logs)
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

changes=${CHANGES:-200}
runs=${RUNS:-3}
run_peerbot=0
peerbot_figures=
figures=
while [[ $# -gt 0 ]]; do
    case $1 in
        --changes) changes=${2:?--changes needs a number}; shift 2 ;;
        --runs) runs=${2:?--runs needs a number}; shift 2 ;;
        --peerbot) run_peerbot=1; shift ;;
        --peerbot-figures) peerbot_figures=${2:?--peerbot-figures needs a file}; shift 2 ;;
        --figures) figures=${2:?--figures needs a file}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $changes =~ ^[1-9][0-9]*$ && $runs =~ ^[1-9][0-9]*$ ]] || { echo "--changes and --runs take positive numbers" >&2; exit 2; }
for tool in python3 curl jq awk; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

venv=${BUILDBOT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/peerbot/buildbot-venv}
py=$venv/bin/python
if ! "$py" -c 'import buildbot, buildbot_worker, buildbot_www, sys; sys.exit(not buildbot.version.startswith("4.3."))' 2>/dev/null; then
    echo "installing Buildbot 4.3 into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'buildbot==4.3.*' 'buildbot-worker==4.3.*' 'buildbot-www==4.3.*' >&2
fi
bb_version=$("$py" -c 'import buildbot; print(buildbot.version)')

bench_root buildbot-bench

die() {
    echo "$*" >&2
    [[ -f ${run_dir:-}/master/twistd.log ]] && { echo "--- end of the master's twistd.log" >&2; tail -n 20 "$run_dir/master/twistd.log" >&2; }
    exit 1
}

# Sends changes COUNT changes numbered from FIRST to the master's PB port,
# one connection each as `buildbot sendchange` does, after writing the
# time of the first send to STAMP.
cat >"$root/send.py" <<'EOF'
import sys, time
from twisted.internet import defer, task
from buildbot.clients.sendchange import Sender

@defer.inlineCallbacks
def main(reactor, master, first, count, stamp):
    sender = Sender(master, auth=("change", "changepw"))
    with open(stamp, "w") as f:
        f.write("%d\n" % int(time.time() * 1e6))
    for i in range(int(first), int(first) + int(count)):
        yield sender.send("main", "%040x" % i, "change %d" % i, ["f"], who="bench", repository="bench")

task.react(main, sys.argv[1:])
EOF

free_ports() {
    "$py" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])'
}

# complete: how many builds the master reports complete (-1 if it does
# not answer). A request unanswered after 5 s is counted in
# $run_dir/unanswered and given up (the master sometimes leaves one
# open until its 60 s idle timeout).
complete() {
    local out rc=0
    out=$(curl -sf -m 5 "$www/api/v2/builds?complete=true&field=buildid&field=complete") || rc=$?
    if ((rc == 28)); then echo x >>"$run_dir/unanswered"; fi
    if ((rc != 0)); then echo -1; return; fi
    jq '.builds | length' <<<"$out" 2>/dev/null || echo -1
}

# wait_complete TARGET T0_US BOUND_S POLL_S: until TARGET builds are
# complete; sets waited_ms to the ms since T0_US (microseconds; 0: read
# $run_dir/stamp). Runs in the script's own shell, not in $(...), so that
# a signal stops the script at once.
wait_complete() {
    local target=$1 t0=$2 bound_us=$(($3 * 1000000)) poll=$4 start n
    start=$(now_us)
    while :; do
        n=$(complete)
        ((n >= target)) && break
        (($(now_us) - start < bound_us)) || die "$n of $target builds complete after $3 s"
        kill -0 "$master_pid" 2>/dev/null || die "the master exited"
        sleep "$poll"
    done
    local end
    end=$(now_us)
    [[ $t0 == 0 ]] && t0=$(cat "$run_dir/stamp")
    waited_ms=$(((end - t0) / 1000))
}

api_median_ms() {
    local url=$1 times=() i
    curl -sf -o /dev/null "$url" || die "request failed: $url"
    for ((i = 0; i < 20; i++)); do
        times+=("$(curl -s -m 5 -o /dev/null -w '%{time_total}' "$url" || echo x >>"$run_dir/unanswered")")
    done
    median "${times[@]}" | awk '{printf "%.1f", $1 * 1000}'
}

rss_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

echo "buildbot $bb_version ($venv); $changes changes, $runs runs, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
all_rate=() all_lat=() all_lat_cli=() all_b50=() all_c50=() all_rss_m=() all_hwm_m=() all_rss_w=()
for ((r = 1; r <= runs; r++)); do
    run_dir=$root/run$r
    mkdir -p "$run_dir"
    read -r pb_port www_port < <(free_ports)
    www=http://127.0.0.1:$www_port
    "$venv/bin/buildbot" create-master -q "$run_dir/master" >/dev/null
    cat >"$run_dir/master/master.cfg" <<EOF
from buildbot.plugins import changes, schedulers, steps, util, worker

c = BuildmasterConfig = {}
c["title"] = "bench"
c["buildbotNetUsageData"] = None
c["db"] = {"db_url": "sqlite:///state.sqlite"}
c["protocols"] = {"pb": {"port": "tcp:$pb_port:interface=127.0.0.1"}}
c["www"] = {"port": "tcp:$www_port:interface=127.0.0.1"}
c["buildbotURL"] = "$www/"
c["workers"] = [worker.Worker("w1", "pw", max_builds=1), worker.Worker("w2", "pw", max_builds=1)]
c["change_source"] = [changes.PBChangeSource(user="change", passwd="changepw")]
c["schedulers"] = [schedulers.AnyBranchScheduler(name="all", treeStableTimer=None, builderNames=["noop"])]
c["builders"] = [
    util.BuilderConfig(
        name="noop",
        workernames=["w1", "w2"],
        factory=util.BuildFactory([steps.ShellCommand(command=["true"])]),
        collapseRequests=False,
    )
]
EOF
    (cd "$run_dir" && exec "$venv/bin/buildbot" start --nodaemon master >master.out 2>&1 </dev/null) &
    master_pid=$!
    pids+=("$master_pid")
    for ((i = 0; i < 1200; i++)); do # 120 s
        curl -sf -o /dev/null "$www/api/v2/builders" && break
        kill -0 "$master_pid" 2>/dev/null || die "the master exited during start-up"
        sleep 0.1
    done
    ((i < 1200)) || die "the master's REST API did not answer within 120 s"
    worker_pids=()
    for w in w1 w2; do
        "$venv/bin/buildbot-worker" create-worker -q "$run_dir/$w" "127.0.0.1:$pb_port" "$w" pw >/dev/null
        (cd "$run_dir" && exec "$venv/bin/buildbot-worker" start --nodaemon "$w" >"$w.out" 2>&1 </dev/null) &
        worker_pids+=($!)
        pids+=($!)
    done
    for ((i = 0; i < 1200; i++)); do # 120 s
        n=$(curl -sf "$www/api/v2/workers" | jq '[.workers[] | select(.connected_to | length > 0)] | length' || echo 0)
        [[ $n == 2 ]] && break
        sleep 0.1
    done
    [[ $n == 2 ]] || die "the workers did not connect within 120 s"

    # Warm-up: one change, until its build completes.
    "$py" "$root/send.py" "127.0.0.1:$pb_port" 1 1 "$run_dir/stamp" || die "sending the warm-up change failed"
    wait_complete 1 0 120 0.05
    warm_ms=$waited_ms

    # Throughput: N changes from one process.
    rm -f "$run_dir/stamp"
    "$py" "$root/send.py" "127.0.0.1:$pb_port" 2 "$changes" "$run_dir/stamp" &
    sender=$!
    pids+=("$sender")
    wait_complete $((changes + 1)) 0 $((120 + 2 * changes)) 0.1
    total_ms=$waited_ms
    wait "$sender" || die "sending the changes failed"
    rate=$(awk -v n="$changes" -v ms="$total_ms" 'BEGIN {printf "%.2f", n * 1000 / ms}')
    failed=$(curl -sf "$www/api/v2/builds?complete=true&field=results&field=complete" | jq '[.builds[] | select(.results != 0)] | length') || die "listing the builds failed"
    by_w=$(curl -sf "$www/api/v2/builds?field=workerid" | jq -r '[.builds[].workerid] | group_by(.) | map(length) | join("/")') || die "listing the builds failed"

    # Latency: one change through the same client, until its build completes.
    rm -f "$run_dir/stamp"
    "$py" "$root/send.py" "127.0.0.1:$pb_port" $((changes + 2)) 1 "$run_dir/stamp" &
    sender=$!
    pids+=("$sender")
    wait_complete $((changes + 2)) 0 120 0.01
    lat=$waited_ms
    wait "$sender" || die "sending the latency change failed"

    # Latency with the command's start-up: `buildbot sendchange`.
    t0=$(now_us)
    "$venv/bin/buildbot" sendchange -m "127.0.0.1:$pb_port" -a change:changepw -W bench -R bench -b main \
        -r "$(printf '%040x' $((changes + 3)))" -C "change $((changes + 3))" f >/dev/null &
    sender=$!
    pids+=("$sender")
    wait_complete $((changes + 3)) "$t0" 120 0.01
    lat_cli=$waited_ms
    wait "$sender" || die "buildbot sendchange failed"

    b50=$(api_median_ms "$www/api/v2/builds?limit=50")
    c50=$(api_median_ms "$www/api/v2/changes?limit=50")
    rss_m=$(rss_kib "$master_pid" VmRSS) hwm_m=$(rss_kib "$master_pid" VmHWM)
    unanswered=0
    [[ -f $run_dir/unanswered ]] && unanswered=$(wc -l <"$run_dir/unanswered")
    rss_w=0
    for pid in "${worker_pids[@]}"; do rss_w=$((rss_w + $(rss_kib "$pid" VmRSS))); done
    echo "run $r: first build after $warm_ms ms; $changes builds in $total_ms ms ($rate builds/s; by worker $by_w;" \
        "$failed not success); one change: $lat ms (with buildbot sendchange's start-up: $lat_cli ms);" \
        "builds?limit=50 $b50 ms, changes?limit=50 $c50 ms; $unanswered REST requests unanswered in 5 s; master RSS $((rss_m / 1024)) MiB (peak $((hwm_m / 1024))), workers $((rss_w / 1024)) MiB together"
    all_rate+=("$rate") all_lat+=("$lat") all_lat_cli+=("$lat_cli") all_b50+=("$b50") all_c50+=("$c50")
    all_rss_m+=("$rss_m") all_hwm_m+=("$hwm_m") all_rss_w+=("$rss_w")

    stop "${worker_pids[@]}" "$master_pid"
    pids=()
    [[ ${KEEP:-0} == 1 ]] || rm -rf "$run_dir"
done

m_rate=$(median "${all_rate[@]}") m_lat=$(median "${all_lat[@]}") m_lat_cli=$(median "${all_lat_cli[@]}")
m_b50=$(median "${all_b50[@]}") m_c50=$(median "${all_c50[@]}")
m_rss_m=$(($(median "${all_rss_m[@]}") / 1024)) m_hwm_m=$(($(median "${all_hwm_m[@]}") / 1024))
m_rss_w=$(($(median "${all_rss_w[@]}") / 1024))
if [[ -n $figures ]]; then
    cat >"$figures" <<EOF
changes $changes
runs $runs
builds_per_s $m_rate
latency_ms $m_lat
latency_cli_ms $m_lat_cli
builds50_ms $m_b50
changes50_ms $m_c50
rss_master_kib $(median "${all_rss_m[@]}")
EOF
fi

# Peerbot's figures, if asked for.
declare -A pb=()
if [[ $run_peerbot == 1 && -z $peerbot_figures ]]; then
    peerbot_figures=$root/peerbot.figures
    echo
    bash "$here/throughput.sh" --changes "$changes" --runs "$runs" --figures "$peerbot_figures"
fi
if [[ -n $peerbot_figures ]]; then
    while read -r key value; do pb[$key]=$value; done <"$peerbot_figures"
    [[ ${pb[changes]:-} == "$changes" ]] || echo "note: the peerbot figures are for ${pb[changes]:-?} changes, these for $changes" >&2
fi
pb_rss=
[[ -n ${pb[rss_a_kib]:-} ]] && pb_rss=$((pb[rss_a_kib] / 1024))
pb_rss_all=
[[ -n ${pb[rss_a_kib]:-} && -n ${pb[rss_b_kib]:-} ]] && pb_rss_all=$(((pb[rss_a_kib] + pb[rss_b_kib]) / 1024))

# row FIGURE PEERBOT BUILDBOT HOW: HOW is "p/b" or "b/p"; "-" when a side is missing.
row() {
    local ratio=-
    if [[ -n $2 && -n $3 && $2 != - && $3 != - ]]; then
        ratio=$(awk -v p="$2" -v b="$3" -v how="$4" 'BEGIN {
            x = how == "p/b" ? (b > 0 ? p / b : 0) : (p > 0 ? b / p : 0)
            printf "%.2fx", x }')
    fi
    printf '%-40s %10s %10s %8s\n' "$1" "${2:--}" "${3:--}" "$ratio"
}
echo
echo "median of $runs runs; ratio: peerbot / buildbot for builds/s, buildbot / peerbot otherwise (above 1: peerbot better)"
printf '%-40s %10s %10s %8s\n' figure peerbot buildbot ratio
row "builds/s ($changes no-op, 2x1)" "${pb[builds_per_s]:-}" "$m_rate" p/b
row "latency change -> result (ms)" "${pb[latency_both_ms]:-}" "$m_lat" b/p
row "  buildbot with sendchange start (ms)" "${pb[latency_both_ms]:-}" "$m_lat_cli" b/p
row "builds?limit=50 (ms)" "${pb[builds50_ms]:-}" "$m_b50" b/p
row "changes?limit=50 (ms)" "${pb[changes50_ms]:-}" "$m_c50" b/p
row "RSS: node A / master (MiB)" "$pb_rss" "$m_rss_m" b/p
row "RSS: 2 nodes / master + 2 workers (MiB)" "$pb_rss_all" "$((m_rss_m + m_rss_w))" b/p
echo "(peerbot's latency is until both nodes serve the result; buildbot's master peak RSS ${m_hwm_m} MiB)"
