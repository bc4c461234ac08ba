// Package pgproc owns what the HA agent, the watchdog and the test harness
// need to know about PostgreSQL as processes on this machine: who runs
// them (Owner: the `postgres` OS user when the caller is root, the caller
// otherwise) and with what environment (ChildEnv, without pharos's
// secrets), where the server's binaries are (FindBinDir), which process
// holds a data directory (PidFile, HolderOf, ServerProcesses) and how to
// kill what is left of a server (KillServer); also the end of a server's
// log for an error message (Tail) and the quoting of what is handed to
// PostgreSQL as text: conninfo values, SQL literals, role statements.
//
// It reads /proc and the data directory's lock file, and signals
// processes; it starts none and decides nothing. It must not know about
// clusters, members, etcd, HA decisions or tests: the agent (haagent), the
// watchdog and the harness (pglocal) build on it, never the other way.
package pgproc
