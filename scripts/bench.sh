#!/usr/bin/env bash
# bench.sh — `make bench`: select-only throughput and latency of PostgreSQL
# directly, through pharos and through HAProxy (TCP mode), measured in
# alternation on one local primary (+ replica) so the ratios hold on a noisy
# machine. Results go to bench/results/.
#
# Knobs (environment): CLIENTS (16), DURATION (10s), ROUNDS (4), SCALE (10),
# MODE (both), PHAROS_GOMAXPROCS (unset: Go's default).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-4}
SCALE=${SCALE:-10}
MODE=${MODE:-both}
BASE_PORT=${BASE_PORT:-17432}
HAPROXY_PORT=$((BASE_PORT + 5))

bash scripts/ensure-deps.sh --bench
work=$(mktemp -d /tmp/pharos-bench.XXXXXX)
chmod 755 "$work"
results=bench/results
mkdir -p "$results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)

pids=()
cleanup() {
	# SIGINT stops the demo cleanly (it stops its servers); HAProxy in
	# foreground mode wants SIGTERM.
	for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
	[ -n "${haproxy_pid:-}" ] && kill -TERM "$haproxy_pid" 2>/dev/null
	for p in "${pids[@]}" ${haproxy_pid:-}; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

# The demo starts a primary and a replica with the proxy in front.
GOMAXPROCS=${PHAROS_GOMAXPROCS:-} bin/pharos demo --dir "$work/demo" --nodes 2 --base-port "$BASE_PORT" --log-level warn >"$work/demo.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
	[ -s "$work/demo/demo.env" ] && break
	sleep 0.5
done
[ -s "$work/demo/demo.env" ] || { cat "$work/demo.log" >&2; echo "bench: demo did not start" >&2; exit 1; }
# shellcheck disable=SC1091
. "$work/demo/demo.env"
primary=${PHAROS_BACKENDS%%,*}
direct_dsn="postgres://app_scram:scram-secret@${primary}/app?sslmode=disable"

cat >"$work/haproxy.cfg" <<CFG
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen pg_rw
    bind 127.0.0.1:${HAPROXY_PORT}
    server primary ${primary}
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
sleep 0.5
kill -0 "$haproxy_pid" 2>/dev/null || { cat "$work/haproxy.log" >&2; echo "bench: haproxy did not start" >&2; exit 1; }

echo "bench: pgbench -i -s $SCALE on the primary" >&2
pgbench -i -q -s "$SCALE" "$direct_dsn" >/dev/null 2>&1

bin/pharos bench throughput \
	--target "direct=$direct_dsn" \
	--target "pharos=$PHAROS_RW_DSN" \
	--target "haproxy=postgres://app_scram:scram-secret@127.0.0.1:${HAPROXY_PORT}/app?sslmode=disable" \
	--clients "$CLIENTS" --duration "$DURATION" --rounds "$ROUNDS" --mode "$MODE" \
	--accounts $((SCALE * 100000)) \
	--json "$results/throughput-$stamp.json" | tee "$results/throughput-$stamp.txt"
echo "bench: results in $results/throughput-$stamp.{txt,json}" >&2
