#!/usr/bin/env bash
# Co-location benchmark: what offline work in the same process costs online requests.
#
#   bench/colocation.sh [--rate N] [--duration S] [--rounds N] [--conditions LIST]
#                       [--offline-transfers N] [--data-dir DIR] [--reuse]
#
# 1. Unless DIR already holds data and --reuse is given, fills DIR (the offline data) with
#    `tally bench --data-dir DIR --transfers N --accounts 10000 --batch 8000 --concurrency 2`
#    (default N: 2,000,000).
# 2. Runs `tally bench-offline --offline-data DIR --rate R --duration S`, which measures online
#    latency of single-transfer requests at R requests/s (default 4000: about half of this
#    2-core machine, see the `cpu` column of `alone`) in three conditions, each in a fresh
#    process serving on a fresh data directory:
#      alone   nothing else runs;
#      idle    a full read model rebuild of DIR's log and a `verify` of DIR run in the same
#              process on the offline executor at idle priority (SCHED_IDLE, in an idle cgroup
#              where the machine allows it);
#      normal  the same at normal priority.
#    With offline work the measured window lasts until it is done (at least S seconds).
#    --rounds N (default 1) runs the conditions in turn N times and compares each one's median
#    over its runs: on a shared machine a single run varies more than the effect measured.
#    --conditions LIST (default alone,idle,normal) runs only those, in that order.
#
# Prints a table (p50/p99/p999, ratios to alone, CPU share, offline seconds) on stderr and one
# JSON line on stdout. It builds nothing: it runs target/release/tally, or $TALLY_BIN. Without
# --data-dir it uses a temporary directory (deleted at the end).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
    echo "colocation.sh: $*" >&2
    exit 1
}

rate=4000
duration=30
rounds=1
conditions=alone,idle,normal
offline_transfers=2000000
data_dir=""
reuse=0

while (($# > 0)); do
    case $1 in
        --rate) rate=${2:?--rate needs a value}; shift 2 ;;
        --duration) duration=${2:?--duration needs a value}; shift 2 ;;
        --rounds) rounds=${2:?--rounds needs a value}; shift 2 ;;
        --conditions) conditions=${2:?--conditions needs a value}; shift 2 ;;
        --offline-transfers) offline_transfers=${2:?--offline-transfers needs a value}; shift 2 ;;
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
        --reuse) reuse=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $rate =~ ^[1-9][0-9]*$ ]] || die "--rate must be a positive integer, found $rate"
[[ $duration =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive integer, found $duration"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, found $rounds"
[[ $offline_transfers =~ ^[1-9][0-9]*$ ]] || die "--offline-transfers must be a positive integer, found $offline_transfers"

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tally=${TALLY_BIN:-$repo_root/target/release/tally}
[[ -x $tally ]] || die "no tally binary at $tally: run 'cargo build --release -p tally' or set TALLY_BIN"

work=$(mktemp -d "${TMPDIR:-/tmp}/tally-colocation.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [[ -z $data_dir ]]; then
    data_dir=$work/offline-data
fi

if [[ $reuse == 1 && -d $data_dir/log ]]; then
    echo "colocation.sh: reusing the offline data in $data_dir" >&2
else
    [[ ! -e $data_dir/log ]] || die "$data_dir already holds a log: pass --reuse to use it, or another --data-dir"
    echo "colocation.sh: filling $data_dir with $offline_transfers transfers..." >&2
    "$tally" bench --data-dir "$data_dir" --transfers "$offline_transfers" --accounts 10000 \
        --batch 8000 --concurrency 2 >/dev/null
fi

echo "colocation.sh: $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $tally" >&2
"$tally" bench-offline --offline-data "$data_dir" --rate "$rate" --duration "$duration" \
    --rounds "$rounds" --conditions "$conditions"
