package localha_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pharos-ha/pharos/internal/localha"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// A node that does not take a write is evidence of fencing only when it
// says why: a server in recovery or one refusing with 25006 is read-only,
// and a server that cannot be reached may be fenced, frozen, slow or on
// another port. tryWrite tells them apart, and notWritable accepts an
// unreachable node only once a separate check shows its PostgreSQL is gone.

// writeOutcome is what one attempt to write on a node showed.
type writeOutcome string

const (
	writeAccepted    writeOutcome = "accepted"    // committed
	writeReadOnly    writeOutcome = "read-only"   // in recovery, or refused with SQLSTATE 25006
	writeBlocked     writeOutcome = "blocked"     // sent to a primary, not acknowledged in time (a synchronous standby's wait)
	writeUnreachable writeOutcome = "unreachable" // no session: connection refused or timed out, 57P03 starting up or shutting down
	writeFailed      writeOutcome = "failed"      // any other error
)

// connectTimeout bounds the session tryWrite opens, apart from the write.
const connectTimeout = 3 * time.Second

// tryWrite attempts one write on n's server: a session (within
// connectTimeout), a recovery check, then a catalog write (a temporary
// table, which commits through WAL like any write and waits for
// synchronous standbys) that must be acknowledged within timeout.
func tryWrite(n *localha.Node, timeout time.Duration) (writeOutcome, error) {
	cctx, ccancel := context.WithTimeout(context.Background(), connectTimeout)
	defer ccancel()
	conn, err := pgx.Connect(cctx, n.DSN())
	if err != nil {
		return writeUnreachable, err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var recovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recovery); err != nil {
		return writeFailed, err
	}
	if recovery {
		return writeReadOnly, nil
	}
	_, err = conn.Exec(ctx, "CREATE TEMP TABLE fence_probe (x int)")
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "25006":
		return writeReadOnly, err
	case ctx.Err() != nil:
		// Not acknowledged within timeout, whatever came after.
		return writeBlocked, fmt.Errorf("no acknowledgement within %v: %v", timeout, err)
	case err == nil:
		return writeAccepted, nil
	}
	return writeFailed, err
}

// postgresGone reports whether n has no PostgreSQL process left: no live
// postmaster and no server process of its data directory.
func postgresGone(n *localha.Node) bool {
	return n.PostmasterPid() == 0 && len(pgproc.ServerProcesses(n.DataDir)) == 0
}

// notWritable reports whether n is seen not to take writes now: read-only,
// or unreachable with its PostgreSQL gone. why says what was seen, also
// when it was not enough ("unreachable, postmaster 123 alive: ...").
func notWritable(n *localha.Node) (ok bool, why string) {
	o, err := tryWrite(n, time.Second)
	switch o {
	case writeReadOnly:
		return true, "read-only"
	case writeUnreachable:
		if postgresGone(n) {
			return true, "stopped (no PostgreSQL process left)"
		}
		return false, fmt.Sprintf("unreachable with PostgreSQL running (postmaster %d): %v", n.PostmasterPid(), err)
	case writeAccepted:
		return false, "accepts writes"
	}
	return false, fmt.Sprintf("%s: %v", o, err)
}
