#!/usr/bin/env bash
# Starts a three-node peerbot cluster on this machine, on loopback only.
#
#   examples/local-cluster.sh [REPO[#BRANCH]]
#
# Node A listens first and makes a cluster of its own; A admits B and C,
# which join through A's address. C is admitted with the extra label
# gpu=yes. With a repository argument (a path or URL, optionally
# followed by #branch), A watches it and announces every new commit; a
# local path is also given to B and C with --allow-repo, since nodes build
# local repositories only when their policy lists them.
# Every node gets its own directory under one temporary directory (key,
# database, mirrors, build dirs, node.json, node.log); Ctrl-C stops the
# nodes and removes it.
#
# The peerbot binary is taken from $PEERBOT_BIN, else `peerbot` on PATH,
# else $CARGO_TARGET_DIR/{release,debug}/peerbot, else target/{release,debug}/peerbot
# in this repository.
set -euo pipefail

if [[ $# -gt 1 ]]; then
    echo "usage: $0 [REPO[#BRANCH]]" >&2
    exit 2
fi

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$script_dir")

find_bin() {
    if [[ -n ${PEERBOT_BIN:-} ]]; then
        if [[ -x $PEERBOT_BIN ]]; then
            echo "$PEERBOT_BIN"
            return 0
        fi
        echo "PEERBOT_BIN=$PEERBOT_BIN is not an executable file" >&2
        return 1
    fi
    if command -v peerbot >/dev/null 2>&1; then
        command -v peerbot
        return 0
    fi
    local dir profile
    for dir in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR"} "$repo_root/target"; do
        for profile in release debug; do
            if [[ -x $dir/$profile/peerbot ]]; then
                echo "$dir/$profile/peerbot"
                return 0
            fi
        done
    done
    echo "no peerbot binary found: set PEERBOT_BIN, put peerbot on PATH, or run 'cargo build --release -p peerbot'" >&2
    return 1
}

bin=$(find_bin)

# Settings meant for a real node in the caller's environment must not leak
# into the demo nodes; every node gets its own explicit flags below.
unset PEERBOT_DATA_DIR PEERBOT_HTTP PEERBOT_LISTEN PEERBOT_BOOTSTRAP PEERBOT_WATCH PEERBOT_LABEL PEERBOT_ALLOW_REPO

root=$(mktemp -d "${TMPDIR:-/tmp}/peerbot-cluster.XXXXXX")
pids=()
cleaned=0

cleanup() {
    [[ $cleaned -eq 1 ]] && return
    cleaned=1
    trap - INT TERM
    local pid i
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give the nodes up to 10 s to stop on their own, then kill what is left.
    for ((i = 0; i < 100; i++)); do
        local alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$root"
    echo "stopped; removed $root"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# node.json is written once (atomically) when the node knows its ports;
# print one string field of it, or the first element of an array field.
json_field() {
    local flat
    flat=$(tr -d ' \n\t' <"$1")
    case $2 in
        listen) sed -n 's/.*"listen":\["\([^"]*\)".*/\1/p' <<<"$flat" ;;
        *) sed -n "s/.*\"$2\":\"\\([^\"]*\\)\".*/\\1/p" <<<"$flat" ;;
    esac
}

# start NAME ARGS... : starts a node in $root/NAME and waits for its node.json.
start() {
    local name=$1
    shift
    local dir=$root/$name
    mkdir -p "$dir"
    "$bin" node --data-dir "$dir" --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 "$@" \
        >"$dir/node.log" 2>&1 </dev/null &
    local pid=$!
    pids+=("$pid")
    local i
    for ((i = 0; i < 600; i++)); do # up to 60 s
        if [[ -s $dir/node.json ]] && [[ -n $(json_field "$dir/node.json" listen) ]]; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "node $name exited during start-up; the end of its log:" >&2
            tail -n 20 "$dir/node.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "node $name did not write $dir/node.json within 60 s; the end of its log:" >&2
    tail -n 20 "$dir/node.log" >&2
    return 1
}

show() {
    local dir=$root/$1
    printf '%s  http://%s\n   peer %s\n   log  %s\n' \
        "$1" "$(json_field "$dir/node.json" http)" "$(json_field "$dir/node.json" peer_id)" "$dir/node.log"
}

a_args=()
allow=()
if [[ $# -eq 1 ]]; then
    a_args=(--watch "$1" --poll-secs 5)
    if [[ -d ${1%#*} ]]; then
        allow=(--allow-repo "$(cd "${1%#*}" && pwd -P)")
    fi
fi

# admit NAME LABELS... : A (which made a cluster of its own at first
# start) admits node NAME with LABELS; prints the flags that join it.
admit() {
    local name=$1
    shift
    local id cert=$root/$name.admission
    id=$("$bin" id --data-dir "$root/$name")
    local labels=()
    for l in "$@"; do labels+=(--label "$l"); done
    "$bin" cluster admit --data-dir "$root/A" "$id" "${labels[@]}" >"$cert"
    echo --cluster "$("$bin" cluster id --data-dir "$root/A")" --admission "$cert" "${labels[@]}"
}

echo "peerbot: $bin"
start A "${a_args[@]}"
boot=$(json_field "$root/A/node.json" listen)
# shellcheck disable=SC2046 # admit prints flags, one word each
start B --bootstrap "$boot" "${allow[@]}" $(admit B)
# shellcheck disable=SC2046
start C --bootstrap "$boot" "${allow[@]}" $(admit C gpu=yes)

echo "three nodes in $root"
show A
show B
show C
[[ $# -eq 1 ]] && echo "A watches $1 (polled every 5 s)"
a_url="http://$(json_field "$root/A/node.json" http)"
cat <<EOF

Try:
  $bin peers   --node $a_url
  $bin results --node $a_url
  PEERBOT_API_TOKEN=\$(cat $root/A/api.token) \\
  $bin announce --node $a_url --repo /path/to/repo --branch main \\
      --commit "\$(git -C /path/to/repo rev-parse main)"
or open $a_url in a browser. Ctrl-C stops all three.
EOF

# Returns when a node exits on its own, or when Ctrl-C (INT) or TERM arrives.
wait -n "${pids[@]}" || true
names=(A B C)
for i in 0 1 2; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
        echo "node ${names[$i]} exited; the end of its log:" >&2
        tail -n 5 "$root/${names[$i]}/node.log" >&2 || true
    fi
done
echo "stopping the others" >&2
exit 1
