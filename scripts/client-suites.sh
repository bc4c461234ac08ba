#!/usr/bin/env bash
# client-suites.sh — runs a client's own test suite, psql and pgbench once
# against PostgreSQL directly and once per pharos proxy mode, and diffs the
# tests' outcomes (issue 15 item 6: clients see no difference). Not run by
# `make test` or CI: the suites are third-party checkouts this repository
# does not carry, and the harness takes the command that runs one as an
# argument, as the suite's own README or CI gives it.
#
# Endpoints, all on 127.0.0.1 (CS_PORT, default 25432, and the next three):
#   direct       PostgreSQL 15 itself, CS_PORT
#   passthrough  bin/pharos proxy, auth_type passthrough, CS_PORT+1
#   proxyauth    bin/pharos proxy authenticating clients itself (CS_AUTH_TYPE,
#                default md5: an md5 challenge for md5 verifiers and SCRAM for
#                SCRAM ones, as PostgreSQL's md5 method), verifiers from
#                auth_user pharos_auth, pool_mode none, CS_PORT+2
#   pooled       the same with pool_mode session, CS_PORT+3 (started only
#                when bin/pharos knows pool_mode)
# Every proxy terminates client TLS (tls_mode allow, the server's certificate)
# and talks TLS to PostgreSQL (CS_BACKEND_TLS, default require).
#
# Commands (state in CS_DIR, default /tmp/pharos-client-suites):
#   start                 initdb + start PostgreSQL as the postgres user, start
#                         the proxies. CS_HBA: a file of pg_hba.conf lines put
#                         before ours (a suite's own); CS_TLS_DIR: a directory
#                         with ca.pem, server.crt, server.key (else a CA and a
#                         localhost certificate are made with openssl);
#                         CS_SETUP_SQL: "db:file ..." run as superuser after
#                         start (the database is created when missing).
#   stop                  stops the proxies and PostgreSQL (by their pids).
#   restart-proxies       after `make build` (e.g. once pooling lands).
#   run NAME [-e EPS] -- CMD...
#                         runs CMD (through bash -c) once per endpoint (EPS: a
#                         comma list, default all that run) with PGHOST, PGPORT,
#                         CS_ENDPOINT, CS_TLS_DIR exported; CS_BEFORE, if set,
#                         is run before each. Logs and outcomes in
#                         CS_DIR/results/NAME.<endpoint>.{log,tests}.
#   report NAME           per-endpoint counts and the tests whose outcome
#                         differs from direct.
#   tools                 psql and pgbench through every endpoint: \conninfo,
#                         session settings, pgbench -i, -S and -M prepared runs.
#
# Outcomes are read from the log: `go test -json` or `-v`, Python unittest
# -v, TAP (mocha --reporter tap), JUnit-style "PASS|FAIL|SKIP <name>" lines.
#
# Fetching the suites (none of their code goes into this repository): clone
# github.com/jackc/pgx, psycopg/psycopg2, brianc/node-postgres or
# pgjdbc/pgjdbc at the release matching the installed driver, set up its test
# database as its CI does (CS_HBA, CS_SETUP_SQL), and give `run` its test
# command. docs/compat.md has the measured results.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CS_DIR=${CS_DIR:-/tmp/pharos-client-suites}
CS_PORT=${CS_PORT:-25432}
CS_AUTH_TYPE=${CS_AUTH_TYPE:-md5}
CS_BACKEND_TLS=${CS_BACKEND_TLS:-require}
PHAROS=${PHAROS:-$ROOT/bin/pharos}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ENDPOINTS=(direct passthrough proxyauth pooled)
# The harness's own login for psql/pgbench, and the proxies' logins.
CS_USER=cs_user CS_PASSWORD=cs-secret
AUTH_USER=pharos_auth AUTH_PASSWORD=auth-secret
MON_USER=pharos_monitor MON_PASSWORD=monitor-secret

log() { echo "client-suites: $*" >&2; }
die() { log "$*"; exit 1; }

port_of() {
	case $1 in
	direct) echo "$CS_PORT" ;;
	passthrough) echo $((CS_PORT + 1)) ;;
	proxyauth) echo $((CS_PORT + 2)) ;;
	pooled) echo $((CS_PORT + 3)) ;;
	*) die "unknown endpoint $1 (direct, passthrough, proxyauth, pooled)" ;;
	esac
}

# running lists the endpoints up now.
running() {
	echo direct
	local m
	for m in passthrough proxyauth pooled; do
		[[ -f $CS_DIR/proxy-$m.pid ]] && kill -0 "$(cat "$CS_DIR/proxy-$m.pid")" 2>/dev/null && echo "$m"
	done
	return 0
}

as_pg() { runuser -u postgres -- "$@"; }
superpsql() { psql -X -q -v ON_ERROR_STOP=1 -h "$CS_DIR" -p "$CS_PORT" -U postgres "$@"; }

make_certs() {
	local d=$CS_DIR/tls
	mkdir -p "$d"
	openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=client-suites CA" \
		-keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
		-keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/ext"
	openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
		-days 30 -extfile "$d/ext" -out "$d/server.crt" 2>/dev/null
}

start_pg() {
	local data=$CS_DIR/data tls=${CS_TLS_DIR:-$CS_DIR/tls}
	[[ -n ${CS_TLS_DIR:-} ]] || make_certs
	for f in ca.pem server.crt server.key; do [[ -f $tls/$f ]] || die "$tls/$f missing"; done
	mkdir -p "$data" && cp "$tls/ca.pem" "$tls/server.crt" "$tls/server.key" "$CS_DIR/"
	chown -R postgres "$CS_DIR"
	chmod 600 "$CS_DIR/server.key"
	as_pg "$PGBIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$CS_DIR/initdb.log"
	cat >>"$data/postgresql.conf" <<-EOF
		listen_addresses = '127.0.0.1'
		port = $CS_PORT
		unix_socket_directories = '$CS_DIR'
		max_connections = 300
		ssl = on
		ssl_cert_file = '$CS_DIR/server.crt'
		ssl_key_file = '$CS_DIR/server.key'
		ssl_ca_file = '$CS_DIR/ca.pem'
		password_encryption = 'scram-sha-256'
		max_prepared_transactions = 10
		fsync = off
		synchronous_commit = off
		full_page_writes = off
	EOF
	{
		echo "local all all trust"
		[[ -z ${CS_HBA:-} ]] || cat "$CS_HBA"
		echo "host all $CS_USER,$AUTH_USER,$MON_USER 127.0.0.1/32 scram-sha-256"
		echo "host all postgres 127.0.0.1/32 trust"
		echo "host all all 127.0.0.1/32 scram-sha-256"
	} >"$data/pg_hba.conf"
	as_pg "$PGBIN/pg_ctl" -D "$data" -l "$CS_DIR/postgresql.log" -w -t 60 start >/dev/null
	superpsql -d postgres <<-EOF
		CREATE ROLE $CS_USER LOGIN PASSWORD '$CS_PASSWORD';
		CREATE DATABASE cs_bench OWNER $CS_USER;
		CREATE ROLE $MON_USER LOGIN PASSWORD '$MON_PASSWORD' IN ROLE pg_monitor;
		CREATE ROLE $AUTH_USER LOGIN PASSWORD '$AUTH_PASSWORD';
		CREATE SCHEMA pharos;
		REVOKE ALL ON SCHEMA pharos FROM PUBLIC;
		CREATE FUNCTION pharos.get_auth(p_usename text, OUT usename text, OUT passwd text)
		RETURNS SETOF record LANGUAGE sql STABLE SECURITY DEFINER
		SET search_path = pg_catalog, pg_temp
		AS \$\$ SELECT rolname::text, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
		        FROM pg_catalog.pg_authid WHERE rolname = p_usename AND rolcanlogin \$\$;
		REVOKE ALL ON FUNCTION pharos.get_auth(text) FROM PUBLIC;
		GRANT USAGE ON SCHEMA pharos TO $AUTH_USER;
		GRANT EXECUTE ON FUNCTION pharos.get_auth(text) TO $AUTH_USER;
	EOF
	local item db file
	for item in ${CS_SETUP_SQL:-}; do
		db=${item%%:*} file=${item#*:}
		superpsql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
			superpsql -d postgres -c "CREATE DATABASE \"$db\""
		superpsql -d "$db" -f "$file" >/dev/null
	done
}

start_proxy() {
	local mode=$1 pool=${2-none} port auth
	port=$(port_of "$mode")
	case $mode in
	passthrough) auth="auth_type: passthrough" ;;
	proxyauth) auth="auth_type: $CS_AUTH_TYPE"${pool:+$'\n'"pool_mode: $pool"} ;;
	pooled) auth="auth_type: $CS_AUTH_TYPE"$'\n'"pool_mode: session" ;;
	esac
	[[ $mode == passthrough ]] || auth+=$'\n'"auth_user: $AUTH_USER"$'\n'"auth_password_file: $CS_DIR/auth.pw"
	printf '%s\n' "$AUTH_PASSWORD" >"$CS_DIR/auth.pw"
	printf '%s\n' "$MON_PASSWORD" >"$CS_DIR/monitor.pw"
	cat >"$CS_DIR/proxy-$mode.yaml" <<-EOF
		source: static
		backends: [127.0.0.1:$CS_PORT]
		rw_listen: 127.0.0.1:$port
		ro_listen: ""
		metrics_listen: ""
		health_user: $MON_USER
		health_password_file: $CS_DIR/monitor.pw
		tls_mode: allow
		tls_cert_file: $CS_DIR/server.crt
		tls_key_file: $CS_DIR/server.key
		backend_tls: $CS_BACKEND_TLS
		max_clients: 1000
		$auth
	EOF
	"$PHAROS" proxy --config "$CS_DIR/proxy-$mode.yaml" >"$CS_DIR/proxy-$mode.log" 2>&1 &
	local pid=$! i
	for i in $(seq 100); do
		if ! kill -0 "$pid" 2>/dev/null; then
			if grep -q 'unknown key "pool_mode"' "$CS_DIR/proxy-$mode.log"; then
				# before pooling: proxyauth runs without the key, pooled not at all
				[[ $mode == proxyauth && -n $pool ]] && start_proxy proxyauth "" && return 0
				log "$mode: this bin/pharos has no pool_mode yet"
				return 0
			fi
			die "proxy $mode exited: $(tail -n 3 "$CS_DIR/proxy-$mode.log")"
		fi
		if PGPASSWORD=$CS_PASSWORD psql -X -h 127.0.0.1 -p "$port" -U "$CS_USER" -d cs_bench \
			-tAc 'SELECT 1' >/dev/null 2>&1; then
			echo "$pid" >"$CS_DIR/proxy-$mode.pid"
			return 0
		fi
		sleep 0.2
	done
	kill "$pid"
	die "proxy $mode did not answer on $port in 20s: $(tail -n 3 "$CS_DIR/proxy-$mode.log")"
}

stop_proxies() {
	local m
	for m in passthrough proxyauth pooled; do
		[[ -f $CS_DIR/proxy-$m.pid ]] || continue
		kill "$(cat "$CS_DIR/proxy-$m.pid")" 2>/dev/null || true
		rm -f "$CS_DIR/proxy-$m.pid"
	done
}

cmd_start() {
	[[ -x $PHAROS ]] || die "$PHAROS missing: make build"
	[[ ! -e $CS_DIR/data ]] || die "$CS_DIR/data exists: stop first"
	mkdir -p "$CS_DIR/results"
	start_pg
	local m
	for m in passthrough proxyauth pooled; do start_proxy "$m"; done
	log "up: $(for e in $(running); do printf '%s=%s ' "$e" "$(port_of "$e")"; done)"
}

cmd_stop() {
	stop_proxies
	if [[ -f $CS_DIR/data/postmaster.pid ]]; then
		as_pg "$PGBIN/pg_ctl" -D "$CS_DIR/data" -m fast -w stop >/dev/null || true
	fi
	rm -rf "$CS_DIR/data"
}

# outcomes turns a test log into "PASS|FAIL|SKIP name" lines, last one wins.
outcomes() {
	awk '
	function put(r, n) { if (n != "") res[n] = r }
	# go test -json
	/^\{"Time":.*"Action":"(pass|fail|skip)".*"Test":/ {
		a = $0; sub(/.*"Action":"/, "", a); sub(/".*/, "", a)
		p = $0; sub(/.*"Package":"/, "", p); sub(/".*/, "", p)
		t = $0; sub(/.*"Test":"/, "", t); sub(/".*/, "", t)
		put(a == "pass" ? "PASS" : a == "fail" ? "FAIL" : "SKIP", p "." t); next
	}
	/^\{"Time":.*"Action":"fail".*"Package":/ && !/"Test":/ {
		p = $0; sub(/.*"Package":"/, "", p); sub(/".*/, "", p); put("FAIL", p ".(package)"); next
	}
	/^\{"Time":.*"Action":"pass".*"Package":/ && !/"Test":/ {
		p = $0; sub(/.*"Package":"/, "", p); sub(/".*/, "", p); put("PASS", p ".(package)"); next
	}
	# go test -v
	/^ *--- (PASS|FAIL|SKIP): / { r = $2; sub(/:$/, "", r); put(r, $3); next }
	# Python unittest -v ("name (module.Class)", possibly a docstring line, then " ... result")
	/^test[^ ]* \([^ )]+\)/ {
		n = $2; gsub(/[()]/, "", n); if (n !~ ("\\." $1 "$")) n = n "." $1
		pending = n
		if ($0 !~ / \.\.\. /) next
	}
	/ \.\.\. (ok|FAIL|ERROR|skipped|expected failure|unexpected success)/ && pending != "" {
		r = $0; sub(/.* \.\.\. /, "", r)
		put(r ~ /^ok/ || r ~ /^expected failure/ ? "PASS" : r ~ /^skipped/ ? "SKIP" : "FAIL", pending)
		pending = ""; next
	}
	# TAP
	/^(not )?ok [0-9]+ / {
		ok = ($1 == "ok"); n = $0; sub(/^(not )?ok [0-9]+ (- )?/, "", n)
		skip = (n ~ /# (SKIP|skip)/); sub(/ # .*/, "", n)
		put(skip ? "SKIP" : ok ? "PASS" : "FAIL", n); next
	}
	# plain
	/^(PASS|FAIL|SKIP) [^ ]/ { r = $1; n = $0; sub(/^[A-Z]+ /, "", n); put(r, n); next }
	END { for (n in res) print res[n], n }
	' "$1" | sort -k2
}

cmd_run() {
	local name=$1 eps
	shift
	eps=$(running | paste -sd, -)
	if [[ ${1:-} == -e ]]; then eps=$2; shift 2; fi
	[[ ${1:-} == -- ]] && shift
	[[ $# -gt 0 ]] || die "run NAME [-e EPS] -- CMD"
	local ep rc
	for ep in ${eps//,/ }; do
		log "$name via $ep ($(port_of "$ep"))"
		[[ -z ${CS_BEFORE:-} ]] || CS_ENDPOINT=$ep bash -c "$CS_BEFORE"
		set +e
		PGHOST=127.0.0.1 PGPORT=$(port_of "$ep") CS_ENDPOINT=$ep CS_TLS_DIR=$CS_DIR \
			bash -c "$*" >"$CS_DIR/results/$name.$ep.log" 2>&1
		rc=$?
		set -e
		echo "$rc" >"$CS_DIR/results/$name.$ep.rc"
		outcomes "$CS_DIR/results/$name.$ep.log" >"$CS_DIR/results/$name.$ep.tests"
	done
	cmd_report "$name"
}

cmd_report() {
	local name=$1 r=$CS_DIR/results ep f
	printf '%-12s %6s %6s %6s %6s %4s\n' endpoint tests pass fail skip rc
	for ep in "${ENDPOINTS[@]}"; do
		f=$r/$name.$ep.tests
		[[ -f $f ]] || continue
		printf '%-12s %6d %6d %6d %6d %4s\n' "$ep" "$(grep -cv '\.(package)$' "$f")" \
			"$(grep -v '\.(package)$' "$f" | grep -c '^PASS ')" "$(grep -v '\.(package)$' "$f" | grep -c '^FAIL ')" \
			"$(grep -c '^SKIP ' "$f")" "$(cat "$r/$name.$ep.rc")"
	done
	[[ -f $r/$name.direct.tests ]] || return 0
	for ep in passthrough proxyauth pooled; do
		f=$r/$name.$ep.tests
		[[ -f $f ]] || continue
		echo "--- $name: outcomes that differ, direct vs $ep"
		awk '{ n = substr($0, length($1) + 2) }
		     NR == FNR { d[n] = $1; next }
		     { e[n] = $1; if (d[n] != $1) printf "%-5s -> %-5s %s\n", (n in d) ? d[n] : "-", $1, n }
		     END { for (n in d) if (!(n in e)) printf "%-5s -> %-5s %s\n", d[n], "-", n }' \
			"$r/$name.direct.tests" "$f" | sort -k4 | grep . || echo "(none)"
	done
}

# tools runs psql and pgbench through each endpoint and diffs what they print.
cmd_tools() {
	local ep port r=$CS_DIR/results
	for ep in $(running); do
		port=$(port_of "$ep")
		export PGPASSWORD=$CS_PASSWORD PGHOST=127.0.0.1 PGPORT=$port PGUSER=$CS_USER PGDATABASE=cs_bench
		{
			echo "PASS psql.connect"
			# what a session sees; the pid, the client address and the TLS line differ by design
			psql -X -At -c '\conninfo' 2>&1 | sed 's/port "[0-9]*"/port N/' | sed 's/^/conninfo: /'
			psql -X -At -v ON_ERROR_STOP=1 <<-'EOF' 2>&1
				SELECT 'settings: ' || string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings
				 WHERE name IN ('application_name','client_encoding','DateStyle','TimeZone','search_path',
				  'standard_conforming_strings','integer_datetimes','IntervalStyle','is_superuser','server_version');
				SELECT 'session: ' || current_user || ' ' || session_user || ' ' || current_database();
				\echo 'encoding: ' :ENCODING ' server_version: ' :SERVER_VERSION_NAME
				SET application_name = 'cs';
				SHOW application_name;
				BEGIN; CREATE TEMP TABLE t(a int); INSERT INTO t SELECT generate_series(1, 3); \copy t to stdout
				ROLLBACK;
				LISTEN cs; NOTIFY cs, 'hi';
			EOF
			PGAPPNAME=from-env PGOPTIONS='-c search_path=public,pg_catalog -c work_mem=8MB' \
				psql -X -At -c "SELECT 'startup: ' || current_setting('application_name') || ' ' || current_setting('search_path') || ' ' || current_setting('work_mem')" 2>&1
			psql -X -At -c 'SELECT pg_sleep(5)' -c 'SELECT 1' >/dev/null 2>&1 &
			local p=$!
			sleep 1
			psql -X -At -c "SELECT 'cancel-target: ' || count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)'"
			wait $p && echo "PASS psql.sleep" || echo "FAIL psql.sleep"
			if pgbench -i -q -s 1 >/dev/null 2>&1; then echo "PASS pgbench.init"; else echo "FAIL pgbench.init"; fi
			local m c
			for m in simple extended prepared; do
				for c in "" -C; do
					if out=$(pgbench -S -n -T 3 -c 4 -j 2 -M "$m" $c 2>&1) && grep -q 'number of failed transactions: 0' <<<"$out"; then
						echo "PASS pgbench.select.$m$c"
					else
						echo "FAIL pgbench.select.$m$c"
						sed 's/^/  /' <<<"$out" | tail -3
					fi
					grep -o 'tps = [0-9.]*' <<<"$out" | head -1 | sed "s/^/tps.$m$c: /"
				done
			done
			if pgbench -n -T 3 -c 4 -j 2 -M prepared 2>&1 | grep -q 'number of failed transactions: 0'; then
				echo "PASS pgbench.tpcb.prepared"
			else echo "FAIL pgbench.tpcb.prepared"; fi
		} >"$r/tools.$ep.log" 2>&1
		outcomes "$r/tools.$ep.log" >"$r/tools.$ep.tests"
		echo 0 >"$r/tools.$ep.rc"
	done
	cmd_report tools
	for ep in $(running); do
		[[ $ep == direct ]] && continue
		echo "--- psql output, direct (<) vs $ep (>), tps lines left out"
		diff <(grep -v '^tps' "$r/tools.direct.log") <(grep -v '^tps' "$r/tools.$ep.log") || true
	done
	grep -H '^tps' "$r"/tools.*.log | sed "s|$r/tools.||"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
restart-proxies)
	stop_proxies
	sleep 0.5
	for m in passthrough proxyauth pooled; do start_proxy "$m"; done
	log "up: $(running | paste -sd' ' -)"
	;;
run) shift && cmd_run "$@" ;;
report) cmd_report "$2" ;;
tools) cmd_tools ;;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
