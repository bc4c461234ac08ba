package pglocal

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// AddReplica clones a new streaming replica from the primary with
// pg_basebackup and a physical replication slot named after it, starts it,
// and waits until the primary reports it streaming.
func (c *Cluster) AddReplica(ctx context.Context) (*Instance, error) {
	primary := c.Primary()
	if primary == nil {
		return nil, errors.New("pglocal: no primary")
	}
	in, err := c.newInstance()
	if err != nil {
		return nil, err
	}
	args := []string{"-D", in.DataDir, "-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port),
		"-U", ReplicationUser, "-w", "-X", "stream", "-c", "fast", "-R", "-C", "-S", in.Name}
	if c.opts.Fast {
		args = append(args, "--no-sync")
	}
	t0 := time.Now()
	if err := runCommand(ctx, c.owner, c.base, c.binDir, "pg_basebackup", args...); err != nil {
		return nil, fmt.Errorf("clone %s from %s: %w", in.Name, primary.Name, err)
	}
	c.log.Info("pg_basebackup done", "instance", in.Name, "from", primary.Name, "took", time.Since(t0))
	if err := c.startFresh(ctx, in); err != nil {
		return nil, err
	}
	if err := c.waitStreaming(ctx, primary, in); err != nil {
		return nil, err
	}
	return in, nil
}

// waitStreaming waits until r is in recovery and primary shows r's slot in
// use by a walsender in state streaming.
func (c *Cluster) waitStreaming(ctx context.Context, primary, r *Instance) error {
	ctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	rec, err := r.InRecovery(ctx)
	if err != nil {
		return err
	}
	if !rec {
		return fmt.Errorf("replica %s is not in recovery", r.Name)
	}
	conn, err := primary.superConn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var state string
	err = poll(ctx, func(ctx context.Context) (bool, error) {
		err := conn.QueryRow(ctx, `SELECT coalesce(max(r.state), '')
			FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_name = $1`, r.Name).Scan(&state)
		if err != nil {
			return false, err
		}
		return state == "streaming", nil
	})
	if err != nil {
		return fmt.Errorf("wait for %s streaming from %s (state %q): %w", r.Name, primary.Name, state, err)
	}
	c.log.Info("replica streaming", "instance", r.Name, "from", primary.Name)
	return nil
}

// WaitReplicaCaughtUp waits until r has replayed everything the primary had
// committed when the call began (even with synchronous_commit=off: it
// commits a tiny transaction on the primary to flush its WAL).
func (c *Cluster) WaitReplicaCaughtUp(ctx context.Context, r *Instance) error {
	primary := c.Primary()
	ctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	pconn, err := primary.superConn(ctx)
	if err != nil {
		return err
	}
	// With synchronous_commit=off (Options.Fast) earlier commits may still
	// sit in WAL buffers, which walsenders do not send. Committing a
	// transaction that wrote WAL (a transactional logical message, which
	// decoding-less servers ignore) with synchronous_commit=local flushes
	// all WAL up to its commit record, without waiting for standbys.
	var target string
	err = execAll(ctx, pconn, []string{
		"SET synchronous_commit = local",
		"SELECT pg_logical_emit_message(true, 'pglocal', 'flush')",
	})
	if err == nil {
		err = pconn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&target)
	}
	pconn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("primary %s wal position: %w", primary.Name, err)
	}
	rconn, err := r.superConn(ctx)
	if err != nil {
		return err
	}
	defer rconn.Close(context.WithoutCancel(ctx))
	var replayed *string
	err = poll(ctx, func(ctx context.Context) (bool, error) {
		var behind *int64
		err := rconn.QueryRow(ctx, `SELECT pg_last_wal_replay_lsn()::text,
			pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())::bigint`, target).Scan(&replayed, &behind)
		if err != nil {
			return false, err
		}
		if behind == nil {
			return false, fmt.Errorf("%s is not a standby", r.Name)
		}
		return *behind <= 0, nil
	})
	if err != nil {
		got := "?"
		if replayed != nil {
			got = *replayed
		}
		return fmt.Errorf("wait for %s to replay %s (at %s): %w", r.Name, target, got, err)
	}
	return nil
}
