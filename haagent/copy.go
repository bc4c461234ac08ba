package haagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
)

// checkSource makes sure up answers as a primary before anything here is
// wiped for a clone from it.
func (p *postgres) checkSource(ctx context.Context, up cluster.Member) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := p.connect(ctx, &up)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", core.ErrSourceUnavailable, up.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return fmt.Errorf("%w: %s: %w", core.ErrSourceUnavailable, up.Name, err)
	}
	if rec {
		return fmt.Errorf("%w: %s is in recovery", core.ErrSourceUnavailable, up.Name)
	}
	return nil
}

// basebackup clones the data directory from up (which must be empty),
// handing each line pg_basebackup prints to onLine (see runLines): its
// progress reports and, with --verbose, the steps that have none (the
// source's checkpoint, the end of the WAL stream, the sync to disk).
func (p *postgres) basebackup(ctx context.Context, up cluster.Member, onLine func(string) bool) error {
	if err := p.cfg.Owner.MkdirAll(p.cfg.DataDir, 0o700); err != nil {
		return err
	}
	args := []string{"-D", p.cfg.DataDir, "-h", up.Host, "-p", strconv.Itoa(up.Port),
		"-U", p.cfg.ReplicationUser, "-X", "stream", "-c", "fast", "--no-password", "--progress", "--verbose"}
	if p.cfg.CloneMaxRate != "" {
		args = append(args, "--max-rate", p.cfg.CloneMaxRate)
	}
	if err := p.checkReplicationLogin(ctx, up); err != nil {
		return fmt.Errorf("%s refused as a clone source: %w", up.Name, err)
	}
	// The password from the passfile, which names up: not in the
	// environment, where it would go to whichever server libpq reaches.
	if err := p.writePassfile(up); err != nil {
		return fmt.Errorf("passfile: %w", err)
	}
	_, err := p.runLines(ctx, copyTimeout, copyStallTimeout, p.toolEnv("PGPASSFILE="+p.passfile(), "PGAPPNAME=pharos-clone"),
		onLine, "pg_basebackup", args...)
	return err
}

// rewindRun is what a pg_rewind run left to classify its failure by.
type rewindRun struct {
	// lines are its messages (progress reports left out), newest last.
	lines []string
	// copied: it passed its point of no return and began to change the
	// target.
	copied bool
	// killed: it was stopped from outside (context ended, stalled).
	killed bool
}

// rewind runs pg_rewind against up, handing each line it prints to onLine
// (see runLines), once no process of this server is left (awaitDead).
// PostgreSQL 13+ runs crash recovery on a target that was not shut down
// cleanly first.
func (p *postgres) rewind(ctx context.Context, up cluster.Member, onLine func(string) bool) (rewindRun, error) {
	var run rewindRun
	if err := p.awaitDead(ctx, p.deadWait); err != nil {
		return run, err
	}
	src := p.memberConnString(up)
	// pg_rewind reads the source's timeline from its control file, which
	// a just-promoted server updates only at its next checkpoint; without
	// one it answers "no rewind required" for a diverged target.
	if err := p.checkpoint(ctx, &up); err != nil {
		return run, fmt.Errorf("%w: checkpoint on %s before rewind: %w", core.ErrSourceUnavailable, up.Name, err)
	}
	// A target that was not shut down cleanly is recovered by pg_rewind in
	// single-user mode, which refuses standby mode: the standby.signal
	// goes now; starting as a standby writes it again.
	if err := os.Remove(p.path("standby.signal")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return run, err
	}
	watch := func(l string) bool {
		if strings.Contains(l, core.RewindCopyMarker) {
			run.copied = true
		}
		return onLine(l)
	}
	lines, err := p.runLines(ctx, copyTimeout, copyStallTimeout, p.toolEnv("PGPASSWORD="+p.cfg.SuperPassword),
		watch, "pg_rewind", "-D", p.cfg.DataDir, "--source-server", src, "--progress")
	run.lines = lines
	run.killed = err != nil && (ctx.Err() != nil || errors.Is(err, errStalled))
	return run, err
}

// wipe removes the data directory's content (for a fresh clone).
func (p *postgres) wipe() error {
	if err := os.RemoveAll(p.cfg.DataDir); err != nil {
		return err
	}
	return p.cfg.Owner.MkdirAll(p.cfg.DataDir, 0o700)
}
