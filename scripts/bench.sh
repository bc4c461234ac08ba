#!/usr/bin/env bash
# bench.sh — `make bench`: pharos side by side with the incumbents, in one
# go, into bench/results/<UTC stamp>/ (report.md, SVG charts, the JSON they
# are built from, and the logs).
#
#  1. Throughput and latency on one local primary: direct, through pharos,
#     HAProxy (TCP mode), PgBouncer in session and in transaction mode, for
#     select-only, a write mix and a new connection per transaction, at each
#     client count. Targets alternate within every round so the ratios hold
#     on a noisy machine.
#  2. Failover through the pharos proxy on a three-node cluster: node loss
#     (asynchronous, then synchronous replication), planned switchover and
#     postmaster crash, FAILOVER_RUNS times each,
#     every acknowledged write read back (internal/localha BenchmarkFailover).
#  3. `pharos bench report` turns the JSON into report.md and the charts.
#
# Knobs (environment): CLIENTS (1,16,64), WORKLOADS (select,write,connect),
# DURATION (5s per run), ROUNDS (3), MODE (simple), SCALE (10: pgbench -s),
# FAILOVER_RUNS (5; 0 skips step 2), PHAROS_THREADS (proxy OS threads; 0 =
# one per CPU), BASE_PORT (17432: ports BASE_PORT..+9 must be free).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-1,16,64}
WORKLOADS=${WORKLOADS:-select,write,connect}
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
MODE=${MODE:-simple}
SCALE=${SCALE:-10}
FAILOVER_RUNS=${FAILOVER_RUNS:-5}
PHAROS_THREADS=${PHAROS_THREADS:-0}
BASE_PORT=${BASE_PORT:-17432}
PROXY_PORT=$((BASE_PORT + 4))
POOLED_PORT=$((BASE_PORT + 6)) # its metrics on +9
HAPROXY_PORT=$((BASE_PORT + 7))
PGBOUNCER_PORT=$((BASE_PORT + 8))

log() { echo "bench: $*" >&2; }

bash scripts/ensure-deps.sh --bench
bin=bin/pharos
# Always (incrementally) built: a stale binary would be measured under the
# commit environment.txt names.
go build -o "$bin" ./cmd/pharos

stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=bench/results/$stamp
mkdir -p "$results"
work=$(mktemp -d /tmp/pharos-bench.XXXXXX)
# The servers and PgBouncer run as postgres when we are root: they must
# reach their files.
chmod 755 "$work"

pids=()
cleanup() {
	# SIGINT stops the demo and the proxy cleanly (the demo stops its
	# servers); HAProxy and PgBouncer stop on SIGTERM.
	for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
	for p in ${haproxy_pid:-} ${pgbouncer_pid:-}; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}" ${haproxy_pid:-} ${pgbouncer_pid:-}; do wait "$p" 2>/dev/null || true; done
	cp "$work"/*.log "$work"/pgbouncer/*.log "$results/" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

as_postgres=()
[ "$(id -u)" -eq 0 ] && as_postgres=(runuser -u postgres --)
pg_bindir=${PHAROS_PG_BINDIR:-/usr/lib/postgresql/15/bin}

{
	echo "date:       $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "machine:    $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	echo "kernel:     $(uname -sr)"
	echo "pharos:     $(git describe --always --dirty 2>/dev/null || echo unknown), $(go version | awk '{print $3}'), proxy threads ${PHAROS_THREADS} (0 = one per CPU)"
	echo "postgres:   $("$pg_bindir/postgres" --version)"
	echo "haproxy:    $(haproxy -v | head -1)"
	echo "pgbouncer:  $(pgbouncer --version | head -1)"
	echo "settings:   clients ${CLIENTS}; workloads ${WORKLOADS}; ${ROUNDS} rounds of ${DURATION}; protocol ${MODE}; pgbench scale ${SCALE}; ${FAILOVER_RUNS} failover runs per fault"
	echo "all on one machine: clients, proxies and servers share the CPUs"
} >"$results/environment.txt"
cat "$results/environment.txt" >&2

# --- 1. Throughput -----------------------------------------------------
# One node is enough to measure the data path, and fewer background
# processes make the comparison steadier. max_connections leaves room for
# the largest client count on every target at once plus PgBouncer's
# lingering server connections.
cat >"$work/agent.yaml" <<YAML
parameters:
  max_connections: "400"
YAML
chmod 644 "$work/agent.yaml"
log "[1/3] starting a one-node cluster (pharos demo) ..."
"$bin" demo --dir "$work/demo" --nodes 1 --base-port "$BASE_PORT" --log-level warn \
	--agent-args "--config $work/agent.yaml" >"$work/demo.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 240); do
	[ -s "$work/demo/demo.env" ] && break
	kill -0 "${pids[0]}" 2>/dev/null || break
	sleep 0.5
done
[ -s "$work/demo/demo.env" ] || { cat "$work/demo.log" >&2; log "the demo cluster did not start"; exit 1; }
# shellcheck disable=SC1091
set -a; . "$work/demo/demo.env"; set +a
primary_port=$(psql "$PHAROS_RW_DSN" -Atc 'SELECT inet_server_port()')
primary=127.0.0.1:$primary_port
user=app password=app-secret db=app
direct_dsn="postgres://$user:$password@$primary/$db?sslmode=disable"

log "pgbench -i -s $SCALE on the primary ($primary) ..."
pgbench -i -q -s "$SCALE" "$direct_dsn" >"$work/pgbench-init.log" 2>&1 || { cat "$work/pgbench-init.log" >&2; exit 1; }

# pharos as it is deployed: its own process, following the cluster in etcd.
log "starting pharos proxy on 127.0.0.1:$PROXY_PORT ..."
"$bin" proxy --source pharos --etcd "$PHAROS_ETCD" --cluster "$PHAROS_CLUSTER" \
	--rw-listen "127.0.0.1:$PROXY_PORT" --ro-listen "" --metrics-listen "127.0.0.1:$((PROXY_PORT + 1))" \
	--threads "$PHAROS_THREADS" --log-level warn >"$work/proxy.log" 2>&1 &
pids+=($!)

# pharos again, authenticating clients itself (SCRAM, the app user's
# verifier copied from pg_authid into an auth_file) and pooling server
# connections in session mode: the configuration pooling needs.
psql "$PHAROS_SUPERUSER_DSN" -Atc "SELECT format('\"%s\" \"%s\"', rolname, rolpassword) FROM pg_authid WHERE rolname = '$user'" >"$work/pharos-users.txt"
cat >"$work/pharos-pooled.yaml" <<YAML
auth_type: scram-sha-256
auth_file: $work/pharos-users.txt
pool_mode: session
YAML
log "starting pharos proxy (scram-sha-256, pool_mode session) on 127.0.0.1:$POOLED_PORT ..."
"$bin" proxy --config "$work/pharos-pooled.yaml" --source pharos --etcd "$PHAROS_ETCD" --cluster "$PHAROS_CLUSTER" \
	--rw-listen "127.0.0.1:$POOLED_PORT" --ro-listen "" --metrics-listen "127.0.0.1:$((BASE_PORT + 9))" \
	--threads "$PHAROS_THREADS" --log-level warn >"$work/proxy-pooled.log" 2>&1 &
pids+=($!)

# HAProxy as it sits in the classic Patroni stack: TCP mode, one server.
cat >"$work/haproxy.cfg" <<CFG
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen pg_rw
    bind 127.0.0.1:${HAPROXY_PORT}
    server primary ${primary}
CFG
log "starting haproxy on 127.0.0.1:$HAPROXY_PORT ..."
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!

# PgBouncer: one instance, two databases, one per pool mode. Session pools
# are sized for the largest client count so nobody queues; the transaction
# pool is what operators run it for: 16 server connections shared by all
# clients. It authenticates clients itself (SCRAM, from the plain password
# in auth_file) and logs in to PostgreSQL with the same password.
max_clients=$(tr ',' '\n' <<<"$CLIENTS" | sort -n | tail -1)
cat >"$work/pgbouncer.ini" <<INI
[databases]
app_session = host=127.0.0.1 port=${primary_port} dbname=${db} pool_mode=session pool_size=${max_clients}
app_tx = host=127.0.0.1 port=${primary_port} dbname=${db} pool_mode=transaction pool_size=16
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PGBOUNCER_PORT}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = ${work}/userlist.txt
max_client_conn = 1000
server_idle_timeout = 10
ignore_startup_parameters = extra_float_digits
; one line per connection would fill the log during the connect workload
log_connections = 0
log_disconnections = 0
logfile = ${work}/pgbouncer/pgbouncer.log
pidfile =
INI
printf '"%s" "%s"\n' "$user" "$password" >"$work/userlist.txt"
chmod 644 "$work/pgbouncer.ini" "$work/userlist.txt"
mkdir -p "$work/pgbouncer"
[ ${#as_postgres[@]} -gt 0 ] && chown postgres "$work/pgbouncer"
log "starting pgbouncer on 127.0.0.1:$PGBOUNCER_PORT ..."
"${as_postgres[@]}" pgbouncer "$work/pgbouncer.ini" >"$work/pgbouncer-stdout.log" 2>&1 &
pgbouncer_pid=$!

# Wait until every endpoint answers (the proxy needs its first etcd read).
targets=(
	"direct=$direct_dsn"
	"pharos=postgres://$user:$password@127.0.0.1:$PROXY_PORT/$db?sslmode=disable"
	"pharos-pooled=postgres://$user:$password@127.0.0.1:$POOLED_PORT/$db?sslmode=disable"
	"haproxy=postgres://$user:$password@127.0.0.1:$HAPROXY_PORT/$db?sslmode=disable"
	"pgbouncer-session=postgres://$user:$password@127.0.0.1:$PGBOUNCER_PORT/app_session?sslmode=disable"
	"pgbouncer-tx=postgres://$user:$password@127.0.0.1:$PGBOUNCER_PORT/app_tx?sslmode=disable"
)
for t in "${targets[@]}"; do
	name=${t%%=*} dsn=${t#*=}
	for i in $(seq 1 50); do
		psql "$dsn" -Atc 'SELECT 1' >/dev/null 2>&1 && break
		[ "$i" -eq 50 ] && { tail -20 "$work"/*.log >&2; log "$name does not answer"; exit 1; }
		sleep 0.2
	done
done

target_flags=()
for t in "${targets[@]}"; do target_flags+=(--target "$t"); done
log "[1/3] throughput: ${#targets[@]} targets, workloads $WORKLOADS, clients $CLIENTS ..."
"$bin" bench throughput "${target_flags[@]}" \
	--workload "$WORKLOADS" --clients "$CLIENTS" --mode "$MODE" \
	--duration "$DURATION" --rounds "$ROUNDS" --accounts $((SCALE * 100000)) \
	--json "$results/throughput.json" | tee "$results/throughput.txt"

# The failover benchmark starts its own clusters on its own ports: stop
# this one first so the two never compete for the CPUs.
cleanup
pids=() haproxy_pid="" pgbouncer_pid=""
trap - EXIT

# --- 2. Failover ---------------------------------------------------------
if [ "$FAILOVER_RUNS" -gt 0 ]; then
	log "[2/3] failover: node loss (asynchronous and synchronous replication), switchover and postmaster crash, $FAILOVER_RUNS runs each (a few minutes) ..."
	PHAROS_BENCH_RESULTS=$(realpath "$results") go test -count=1 -timeout 60m -run '^$' \
		-bench 'Failover' -benchtime "${FAILOVER_RUNS}x" ./internal/localha | tee "$results/failover.txt"
else
	log "[2/3] failover: skipped (FAILOVER_RUNS=0)"
fi

# --- 3. Report -----------------------------------------------------------
log "[3/3] report ..."
"$bin" bench report --dir "$results" >/dev/null
ln -sfn "$stamp" bench/results/latest
log "done: $results/report.md (also bench/results/latest/)"
sed -n '/^## Main table/,/^## Throughput and latency/p' "$results/report.md" | sed '$d'
