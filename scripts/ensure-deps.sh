#!/usr/bin/env bash
# ensure-deps.sh [--bench]
#
# Makes sure this machine has what `make test` and `make demo` run against:
# the PostgreSQL 15 server and client binaries in /usr/lib/postgresql/15/bin
# (or $PHAROS_PG_BINDIR when set), haproxy (the restapi tests run the real
# one against the agent's REST API), promtool (from Debian's prometheus
# package: the deploy tests check the scrape config and the alert rules with
# it) and an unprivileged `postgres` OS user.
# With --bench it also ensures pgbouncer (used by `make bench`, with haproxy,
# as comparison points). Their system services are neither enabled nor
# started.
#
# Idempotent: when everything is present it only checks a few files and
# exits. Installing needs root (Debian/Ubuntu, apt-get); as another user it
# says what is missing and exits 1.
set -euo pipefail

log() { echo "ensure-deps: $*" >&2; }
die() { log "$*"; exit 1; }

bench=0
for arg in "$@"; do
	case "$arg" in
	--bench) bench=1 ;;
	-h | --help)
		sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
		exit 0
		;;
	*) log "unknown argument: $arg (usage: $0 [--bench])"; exit 2 ;;
	esac
done

is_root=0
[ "$(id -u)" -eq 0 ] && is_root=1

pg_bindir=${PHAROS_PG_BINDIR:-/usr/lib/postgresql/15/bin}

# Packages to install, filled by the checks below.
pkgs=()

pg_missing=()
for b in postgres initdb pg_ctl pg_basebackup pg_rewind pgbench psql; do
	[ -x "$pg_bindir/$b" ] || pg_missing+=("$b")
done
if [ ${#pg_missing[@]} -gt 0 ]; then
	if [ -n "${PHAROS_PG_BINDIR:-}" ]; then
		die "PHAROS_PG_BINDIR=$pg_bindir lacks: ${pg_missing[*]}"
	fi
	pkgs+=(postgresql-15 postgresql-client-15)
fi

# have NAME: true when an executable NAME is on PATH or in the sbin dirs
# (which a non-root PATH often lacks).
have() {
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}
# Packages whose system service must stay off once installed.
svc_pkgs=()
have haproxy || svc_pkgs+=(haproxy)
# promtool ships in the prometheus package, whose server must stay off too.
have promtool || svc_pkgs+=(prometheus)
if [ "$bench" -eq 1 ]; then
	have pgbouncer || svc_pkgs+=(pgbouncer)
fi
pkgs+=(${svc_pkgs[@]+"${svc_pkgs[@]}"})

if [ ${#pkgs[@]} -gt 0 ]; then
	if [ "$is_root" -ne 1 ]; then
		flag=""
		[ "$bench" -eq 1 ] && flag=" --bench"
		die "missing packages: ${pkgs[*]}; run as root (sudo bash $0$flag) or install them yourself"
	fi
	command -v apt-get >/dev/null 2>&1 || die "missing packages: ${pkgs[*]}; no apt-get here, install them by hand"

	# Debian's postgresql-common would otherwise create and start a default
	# cluster on port 5432.
	mkdir -p /etc/postgresql-common
	conf=/etc/postgresql-common/createcluster.conf
	if ! grep -qsE '^[[:space:]]*create_main_cluster[[:space:]]*=[[:space:]]*false' "$conf"; then
		if [ -f "$conf" ]; then
			sed -i -E '/^[[:space:]]*create_main_cluster[[:space:]]*=/d' "$conf"
		fi
		echo 'create_main_cluster = false' >>"$conf"
	fi

	# Keep maintainer scripts from starting (or restarting) any service while
	# we install: invoke-rc.d and deb-systemd-invoke honour policy-rc.d exit 101.
	# An existing policy-rc.d (common in containers) is left as it is.
	policy=/usr/sbin/policy-rc.d
	own_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# written by pharos scripts/ensure-deps.sh during apt-get install\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		own_policy=1
		trap 'rm -f "$policy"' EXIT
	fi

	log "installing ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Wait for a concurrent apt/dpkg (unattended-upgrades on a fresh VM).
	apt_opts=(-o DPkg::Lock::Timeout=300)
	apt-get "${apt_opts[@]}" update -qq >&2
	apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${pkgs[@]}" >&2

	if [ "$own_policy" -eq 1 ]; then
		rm -f "$policy"
		trap - EXIT
	fi

	# The tests and the bench start their own haproxy and pgbouncer
	# instances (and only need prometheus's promtool); the system services
	# must stay off.
	for svc in ${svc_pkgs[@]+"${svc_pkgs[@]}"}; do
		if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
			systemctl disable --now "$svc" >/dev/null 2>&1 || true
		elif command -v service >/dev/null 2>&1; then
			service "$svc" stop >/dev/null 2>&1 || true
		fi
		if command -v update-rc.d >/dev/null 2>&1; then
			update-rc.d "$svc" disable >/dev/null 2>&1 || true
		fi
	done

	for b in postgres initdb pg_ctl pg_basebackup pg_rewind pgbench psql; do
		[ -x "$pg_bindir/$b" ] || die "installed ${pkgs[*]} but $pg_bindir/$b is still missing"
	done
fi

# PostgreSQL refuses to run as root; as root the tests and the demo run the
# servers as this user. The package normally creates it.
if [ "$is_root" -eq 1 ] && ! id -u postgres >/dev/null 2>&1; then
	log "creating system user postgres"
	useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

exit 0
