#!/usr/bin/env bash
# PostgreSQL baseline for `tally bench --batch 1 --concurrency 64`: one
# transaction per transfer, driven by pgbench with 64 clients, against a
# throwaway PostgreSQL instance with durable commits (fsync=on,
# synchronous_commit=on). Prints pgbench's summary and one final JSON line.
#
# Usage: bench/postgres/run.sh [--transfers N | --duration S] [--accounts N]
#                              [--clients N] [--threads N]
# Set PG_BINDIR to use PostgreSQL binaries from a specific directory.
set -euo pipefail

transfers=200000
duration=""
accounts=10000
clients=64
threads=2

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --transfers) transfers="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --accounts) accounts="$2"; shift 2 ;;
        --clients) clients="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() {
    echo "run.sh: $*" >&2
    exit 1
}

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Find the server binaries: $PG_BINDIR if set, else pg_config, else the
# Debian layout.
bindir="${PG_BINDIR:-}"
if [[ -z "$bindir" ]] && command -v pg_config >/dev/null 2>&1; then
    bindir="$(pg_config --bindir 2>/dev/null || true)"
fi
if [[ -z "${PG_BINDIR:-}" ]] && [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
for tool in initdb pg_ctl postgres psql pgbench; do
    if [[ -z "$bindir" || ! -x "$bindir/$tool" ]]; then
        die "PostgreSQL binary '$tool' not found (looked in \$PG_BINDIR, pg_config --bindir and /usr/lib/postgresql/*/bin); install the Debian package 'postgresql' (apt-get install postgresql)"
    fi
done

# The server refuses to run as root: run it as the 'postgres' user then.
as_db_user=()
if [[ "$(id -u)" -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server as; install the Debian package 'postgresql' or run as a normal user"
    as_db_user=(runuser -u postgres --)
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/tally-pg-baseline.XXXXXX")"
pgdata="$work/data"
started=0
cleanup() {
    if [[ "$started" -eq 1 ]]; then
        "${as_db_user[@]}" "$bindir/pg_ctl" -D "$pgdata" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
if [[ ${#as_db_user[@]} -gt 0 ]]; then
    chown postgres: "$work"
fi

# A free loopback port: nothing answers on it right now. The server start
# below fails loudly if another process grabs it in between.
port=""
for _ in $(seq 1 100); do
    candidate=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
        port="$candidate"
        break
    fi
done
[[ -n "$port" ]] || die "no free port found on 127.0.0.1"

echo "run.sh: PostgreSQL from $bindir, data in $pgdata, port $port" >&2
"${as_db_user[@]}" "$bindir/initdb" -D "$pgdata" -U bench -A trust --no-sync >"$work/initdb.log" 2>&1 \
    || { cat "$work/initdb.log" >&2; die "initdb failed"; }
# Durability stays at PostgreSQL's defaults (fsync=on, synchronous_commit=on):
# a transfer is acknowledged only once its commit is on disk, as in Tally.
cat >>"$pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work'
max_connections = $((clients + 16))
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 256MB
EOF
"${as_db_user[@]}" "$bindir/pg_ctl" -D "$pgdata" -l "$work/server.log" -w -t 60 start >/dev/null \
    || { cat "$work/server.log" >&2; die "PostgreSQL did not start"; }
started=1

psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U bench -d postgres)
"${psql[@]}" <<EOF
CREATE TABLE accounts (
    id text PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0)
);
CREATE TABLE transfers (
    id text PRIMARY KEY,
    from_id text NOT NULL REFERENCES accounts (id),
    to_id text NOT NULL REFERENCES accounts (id),
    amount bigint NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO accounts (id, balance)
    SELECT 'acct-' || i, 1000000000000 FROM generate_series(0, $accounts - 1) AS i;
VACUUM ANALYZE;
CHECKPOINT;
EOF

run_args=()
if [[ -n "$duration" ]]; then
    run_args=(-T "$duration")
else
    per_client=$(((transfers + clients - 1) / clients))
    run_args=(-t "$per_client")
fi

echo "run.sh: pgbench -c $clients -j $threads ${run_args[*]} ($accounts accounts)" >&2
cd "$work"
"$bindir/pgbench" -h 127.0.0.1 -p "$port" -U bench -n -M prepared \
    -c "$clients" -j "$threads" "${run_args[@]}" \
    -D accounts="$accounts" -f "$script_dir/transfer.sql" \
    --log --log-prefix="$work/txlog" postgres | tee "$work/pgbench.out"

# Per-transaction log lines: client_id transaction_no latency_us script_no epoch_s epoch_us.
processed="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/pgbench.out")"
failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$work/pgbench.out")"
tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$work/pgbench.out")"
[[ -n "$processed" && -n "$tps" ]] || die "could not parse pgbench's summary"
cat "$work"/txlog.* | awk '{ print $3 / 1000.0 }' | sort -n >"$work/latencies_ms"
count="$(wc -l <"$work/latencies_ms")"
percentile() {
    # Nearest rank: the ceil(q * count)-th smallest latency.
    local rank
    rank="$(awk -v q="$1" -v n="$count" 'BEGIN { r = q * n; r = (r == int(r)) ? r : int(r) + 1; if (r < 1) r = 1; print r }')"
    sed -n "${rank}p" "$work/latencies_ms"
}
p50="$(percentile 0.50)"
p99="$(percentile 0.99)"
seconds="$(awk -v n="$processed" -v tps="$tps" 'BEGIN { printf "%.3f", n / tps }')"

total="$(
    "${psql[@]}" -At -c "SELECT (SELECT count(*) FROM transfers) || ' ' || (SELECT sum(balance) FROM accounts)"
)"
echo "run.sh: $processed transfers committed; transfers table has ${total% *} rows; sum of balances ${total#* } (expected $((accounts * 1000000000000)))" >&2
[[ "${total#* }" == "$((accounts * 1000000000000))" ]] || die "sum of balances changed: conservation violated"

printf '{"system":"postgresql","transfers":%s,"seconds":%s,"transfers_per_sec":%.0f,"p50_ms":%.3f,"p99_ms":%.3f,"clients":%s,"threads":%s,"accounts":%s,"failed":%s}\n' \
    "$processed" "$seconds" "$tps" "$p50" "$p99" "$clients" "$threads" "$accounts" "${failed:-0}"
