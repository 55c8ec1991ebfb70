#!/usr/bin/env bash
# Restart benchmark: how long `tally serve` takes to be ready on a data directory holding
# N transfers (the issue asks for at most 2 s at 10 million).
#
#   bench/restart.sh [--transfers N] [--data-dir DIR] [--reuse] [--runs R] [--crash-tail K]
#
# 1. Unless DIR already holds data and --reuse is given, fills DIR with
#    `tally bench --data-dir DIR --transfers N --accounts 10000 --batch 8000 --concurrency 2`
#    (bench starts its own server on DIR and stops it with SIGTERM, which snapshots the final
#    state).
# 2. Clean restarts, R times (default 3): starts `tally serve --data-dir DIR --listen 127.0.0.1:0`
#    and times, from just before the process starts, the `listening on http://...` line on stdout
#    (printed after recovery: snapshot load, log replay, read model open) and the first 200 from
#    GET /readyz. SIGTERM between runs. The newest snapshot is the shutdown one, so these replay
#    nothing: they measure the snapshot load.
# 3. Crash restart, once: starts the server, adds K transfers (default 900000, just under the
#    default snapshot interval of 1,000,000 events, so no periodic snapshot covers them) with
#    `tally bench --target`, SIGKILLs it, and times the restart, which loads the newest snapshot
#    and replays the log tail after it. With --crash-tail 0 the kill comes right after the
#    start, so the tail is empty. Either way the crash step adds to DIR: a --reuse run later
#    measures a slightly bigger directory.
#
# Prints each time, the recovery phases from the server's log, and one JSON line on stdout.
# It builds nothing: it runs target/release/tally, or $TALLY_BIN. Without --data-dir it uses a
# temporary directory (deleted at the end). A 10M-transfer directory holds about 1.2 GB right
# after filling (log 370 MB, two snapshots of 320 MB) and grows as the read model catches up.
# The page cache stays warm: the times are for a restart on a running machine, not a cold boot.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
    echo "restart.sh: $*" >&2
    exit 1
}

transfers=10000000
data_dir=""
reuse=0
runs=3
crash_tail=900000
accounts=10000
# How long one start may take before the run counts as failed.
start_timeout_s=300

while (($# > 0)); do
    case $1 in
        --transfers) transfers=${2:?--transfers needs a value}; shift 2 ;;
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
        --reuse) reuse=1; shift ;;
        --runs) runs=${2:?--runs needs a value}; shift 2 ;;
        --crash-tail) crash_tail=${2:?--crash-tail needs a value}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $transfers =~ ^[1-9][0-9]*$ ]] || die "--transfers must be a positive integer, found $transfers"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, found $runs"
[[ $crash_tail =~ ^[0-9]+$ ]] || die "--crash-tail must be a non-negative integer, found $crash_tail"

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tally=${TALLY_BIN:-$repo_root/target/release/tally}
[[ -x $tally ]] || die "no tally binary at $tally: run 'cargo build --release -p tally' or set TALLY_BIN"
command -v curl >/dev/null || die "curl is needed to poll /readyz (Debian/Ubuntu package: curl)"

work=$(mktemp -d "${TMPDIR:-/tmp}/tally-restart.XXXXXX")
if [[ -z $data_dir ]]; then
    data_dir=$work/data
fi
server_pid=""
server_fd=""

cleanup() {
    local status=$?
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if ((status != 0)) && [[ -f $work/server.err ]]; then
        echo "restart.sh: last server log lines:" >&2
        tail -n 20 "$work/server.err" >&2 || true
    fi
    # A temporary data directory lives in $work; one given with --data-dir does not.
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ns() {
    date +%s%N
}

# The epoch nanoseconds of the first server log line matching $2, from its RFC 3339 timestamp.
log_time_ns() {
    local line
    line=$(grep -m1 -- "$2" "$1" || true)
    [[ -n $line ]] || return 0
    date -d "${line%% *}" +%s%N
}

# The value of field $3 (`name=value`) in the first line of server log $1 that matches $2.
log_field() {
    { grep -m1 -- "$2" "$1" || true; } | { grep -o -- " $3=[^ ]*" || true; } | sed 's/^[^=]*=//'
}

has_data() {
    [[ -d $data_dir/log ]] && compgen -G "$data_dir/log/*.tlog" >/dev/null
}

# Starts `tally serve` on $data_dir and waits for its listening line. Sets server_pid,
# server_url, start_ns, listen_ns; the server's stderr goes to $work/server.err.
start_server() {
    rm -f "$work/server.out"
    mkfifo "$work/server.out"
    start_ns=$(now_ns)
    NO_COLOR=1 TALLY_LOG=${TALLY_LOG:-info} "$tally" serve --data-dir "$data_dir" \
        --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.err" </dev/null &
    server_pid=$!
    exec {server_fd}<"$work/server.out"
    server_url=""
    local line
    while IFS= read -r -t "$start_timeout_s" -u "$server_fd" line; do
        if [[ $line == "listening on http://"* ]]; then
            server_url=${line#listening on }
            break
        fi
    done
    listen_ns=$(now_ns)
    [[ -n $server_url ]] || die "tally serve did not print its listening line within ${start_timeout_s}s or exited"
}

# Polls GET /readyz until it answers 200. Sets ready_ns.
wait_ready() {
    local code
    while true; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$server_url/readyz" || true)
        [[ $code == 200 ]] && break
        kill -0 "$server_pid" 2>/dev/null || die "tally serve exited before /readyz answered 200"
        (($(now_ns) - start_ns < start_timeout_s * 1000000000)) || die "/readyz did not answer 200 within ${start_timeout_s}s"
        sleep 0.005
    done
    ready_ns=$(now_ns)
}

# Stops the server with signal $1 and waits for it. Sets stop_ms. A SIGTERM must end in a
# clean exit: a graceful shutdown that fails is a bug.
stop_server() {
    local signal=$1 status=0 stop_start_ns
    stop_start_ns=$(now_ns)
    kill -s "$signal" "$server_pid"
    # Bash reports a job killed by a signal on the stderr of `wait`; that is expected here.
    wait "$server_pid" 2>/dev/null || status=$?
    stop_ms=$((($(now_ns) - stop_start_ns) / 1000000))
    exec {server_fd}<&-
    server_pid=""
    if [[ $signal == TERM ]] && ((status != 0)); then
        die "tally serve exited with status $status after SIGTERM"
    fi
}

ms_between() {
    if [[ -z $1 || -z $2 ]]; then
        echo "?"
    else
        echo $((($2 - $1) / 1000000))
    fi
}

# Prints one start's times and its recovery phases from the server log. Sets listen_ms, ready_ms.
report_start() {
    local label=$1 err=$work/server.err
    listen_ms=$(((listen_ns - start_ns) / 1000000))
    ready_ms=$(((ready_ns - start_ns) / 1000000))
    local log_opened_ns recovered_ns read_opened_ns
    log_opened_ns=$(log_time_ns "$err" "opened log")
    recovered_ns=$(log_time_ns "$err" "replayed_events=")
    read_opened_ns=$(log_time_ns "$err" "read model opened")
    recovery_line_snapshot=$(log_field "$err" replayed_events= snapshot)
    replayed_events=$(log_field "$err" replayed_events= replayed_events)
    recovery_elapsed_ms=$(log_field "$err" replayed_events= elapsed_ms)
    read_position=$(log_field "$err" "read model opened" position)
    log_end=$(log_field "$err" "read model opened" log_end)
    printf '%-8s listening after %5d ms, /readyz 200 after %5d ms\n' "$label" "$listen_ms" "$ready_ms"
    printf '         phases: log opened at +%s ms, snapshot load and replay done at +%s ms (engine recovery %s ms: snapshot %s, replayed %s events), read model opened at +%s ms (read model at position %s of %s)\n' \
        "$(ms_between "$start_ns" "$log_opened_ns")" "$(ms_between "$start_ns" "$recovered_ns")" \
        "$recovery_elapsed_ms" "$recovery_line_snapshot" "$replayed_events" \
        "$(ms_between "$start_ns" "$read_opened_ns")" "$read_position" "$log_end"
}

median() {
    printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"
}

join_by_comma() {
    local IFS=,
    echo "$*"
}

echo "restart.sh: $(uptime)" >&2
echo "restart.sh: tally binary $tally, data directory $data_dir" >&2

# 1. The data directory.
if has_data; then
    ((reuse)) || die "$data_dir already holds data: pass --reuse to measure it as it is, or choose an empty directory"
    echo "restart.sh: reusing the data in $data_dir (--transfers $transfers is taken on trust)" >&2
else
    echo "restart.sh: filling $data_dir with $transfers transfers between $accounts accounts" >&2
    fill_start_ns=$(now_ns)
    TALLY_LOG=warn "$tally" bench --data-dir "$data_dir" --transfers "$transfers" \
        --accounts "$accounts" --batch 8000 --concurrency 2 >"$work/bench.json"
    echo "restart.sh: filled in $(((($(now_ns) - fill_start_ns)) / 1000000)) ms: $(cat "$work/bench.json")" >&2
fi
echo "restart.sh: data directory size: $(du -sh "$data_dir" | cut -f1) (log $(du -sh "$data_dir/log" | cut -f1), snapshots $(du -sh "$data_dir/snapshots" | cut -f1))" >&2

# 2. Clean restarts.
listen_times=()
ready_times=()
recovery_times=()
for ((run = 1; run <= runs; run++)); do
    start_server
    wait_ready
    report_start "run $run"
    listen_times+=("$listen_ms")
    ready_times+=("$ready_ms")
    recovery_times+=("$recovery_elapsed_ms")
    stop_server TERM
    echo "         stopped (SIGTERM) in $stop_ms ms"
done
events=$log_end

# 3. Crash restart.
start_server
wait_ready
if ((crash_tail > 0)); then
    echo "crash:   adding $crash_tail transfers to the running server, then SIGKILL" >&2
    TALLY_LOG=warn "$tally" bench --target "$server_url" --transfers "$crash_tail" \
        --accounts "$accounts" --batch 8000 --concurrency 2 >"$work/tail.json"
fi
stop_server KILL
start_server
wait_ready
report_start "crash"
crash_listen_ms=$listen_ms
crash_ready_ms=$ready_ms
crash_replayed_events=$replayed_events
crash_recovery_ms=$recovery_elapsed_ms
stop_server TERM
echo "         stopped (SIGTERM, writes a snapshot of the replayed tail) in $stop_ms ms"

printf '{"transfers":%s,"events":%s,"restart_ms":[%s],"ready_ms":[%s],"ready_ms_median":%s,"recovery_ms":[%s],"crash":{"tail_transfers":%s,"replayed_events":%s,"restart_ms":%s,"ready_ms":%s,"recovery_ms":%s}}\n' \
    "$transfers" "${events:-null}" "$(join_by_comma "${listen_times[@]}")" \
    "$(join_by_comma "${ready_times[@]}")" "$(median "${ready_times[@]}")" \
    "$(join_by_comma "${recovery_times[@]}")" "$crash_tail" "${crash_replayed_events:-null}" \
    "$crash_listen_ms" "$crash_ready_ms" "${crash_recovery_ms:-null}"
