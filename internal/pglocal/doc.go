// Package pglocal runs local PostgreSQL 15 servers on loopback for the tests
// and the demo.
//
// It owns: initdb, the configuration files it writes (postgresql.conf
// additions, pg_hba.conf, a self-signed certificate), the roles and the
// database the tests log in with, starting and stopping postmasters as
// child processes, cloning replicas with pg_basebackup and a physical
// replication slot, and promotion. Finding the server binaries, the OS
// account the servers run as (the unprivileged `postgres` user when the
// caller runs as root: PostgreSQL refuses to run as root), the children's
// environment and which processes belong to a data directory come from
// package pgproc, which the HA agent uses too.
//
// It must not know about the proxy, routing, etcd or any HA decision: it
// starts what it is told to start and stops what it started. The HA agent
// manages its own servers; this package is the harness around them, and no
// production package imports it.
//
// Layout: every Cluster has one base directory (by default a fresh
// os.MkdirTemp under os.TempDir(), owned by the server user, removed by
// Close) holding, per instance NAME:
//
//	NAME/        the data directory (0700)
//	NAME.s/      the unix socket directory (short on purpose: socket paths
//	             are limited to 107 bytes)
//	NAME.log     the postmaster's stdout and stderr (logging_collector=off)
//
// Port, socket directory, listen address and cluster_name are passed on the
// postmaster's command line, not in postgresql.conf, so a replica cloned by
// pg_basebackup keeps its own settings with the primary's configuration files.
//
// Child processes: each postmaster is started from a goroutine locked to its
// OS thread that lives exactly as long as the postmaster, with
// Pdeathsig=SIGKILL (Linux sends it when the creating thread exits, so an
// unlocked start could kill the server whenever the Go runtime retires a
// thread) and in its own process group (Setpgid), so a Ctrl-C on the
// terminal does not reach the servers twice and Kill can take down the
// postmaster with all its backends. If the test binary dies, the
// postmasters get SIGKILL and their backends exit when they notice.
//
// Set PHAROS_KEEP_PGDATA=1 to keep the base directory after Close for
// post-mortem reading of data directories and logs.
package pglocal
