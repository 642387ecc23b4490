# Helpers the bench scripts share; sourced, not run.

# stop PID...: TERM, up to 20 s to exit, then KILL; reaps them.
stop() {
    local pid i alive
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 200; i++)); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    ((alive == 0)) || echo "a process did not stop within 20 s of SIGTERM; killing it" >&2
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

now_us() { echo "${EPOCHREALTIME/./}"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# bench_root PREFIX: makes the run's temporary directory in $root and an
# empty $pids; at exit the processes in $pids are stopped and $root is
# removed (kept with KEEP=1).
bench_root() {
    root=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
bench_cleanup() {
    trap - INT TERM
    ((${#pids[@]} == 0)) || stop "${pids[@]}"
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $root" >&2; else rm -rf "$root"; fi
}
