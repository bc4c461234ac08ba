package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// SwitchMember is a real PostgreSQL server the switch benchmark names as
// primary in turn. It does not have to be writable: the benchmark measures
// routing, and it recognises the backend by inet_server_port().
type SwitchMember struct {
	Name string
	Host string
	Port int
}

// SwitchConfig drives RunSwitch.
type SwitchConfig struct {
	Etcd    *clientv3.Client
	Keys    cluster.Keys
	RWDSN   string // the proxy's rw endpoint
	Members []SwitchMember
	Flips   int
	// Timeout bounds one flip: the write and the wait for a session on
	// the new primary.
	Timeout time.Duration
	// Progress receives one line per flip; nil discards.
	Progress io.Writer
}

// SwitchResult holds one latency per flip: from the etcd write that names
// the new leader to the first new rw session that lands on it.
type SwitchResult struct {
	Latencies []time.Duration
	// Attempts counts the rw sessions opened while waiting, all flips.
	Attempts int
}

// Percentile returns the p-th percentile (0-100) by nearest rank.
func (r SwitchResult) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	s := slices.Clone(r.Latencies)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// switchLeaseTTL is how long the records RunSwitch writes outlive it.
const switchLeaseTTL = 60 * time.Second

// RunSwitch flips the leader between cfg.Members cfg.Flips times, as an
// agent would (member records first, then the leader key with a fresh
// create revision, all on a lease: the proxy ignores records on none), and
// times how long the proxy takes to route a new rw session to the new
// leader. It leaves the last leader in place for a minute after it
// returns, when the lease it stops renewing expires.
func RunSwitch(ctx context.Context, cfg SwitchConfig) (SwitchResult, error) {
	if len(cfg.Members) < 2 {
		return SwitchResult{}, errors.New("switch: at least two members are needed")
	}
	if cfg.Flips < 1 {
		return SwitchResult{}, errors.New("switch: flips must be at least 1")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	lease, err := cfg.Etcd.Grant(ctx, int64(switchLeaseTTL/time.Second))
	if err != nil {
		return SwitchResult{}, fmt.Errorf("switch: etcd grant: %w", err)
	}
	kctx, stopKeepAlive := context.WithCancel(ctx)
	defer stopKeepAlive()
	// The client renews the lease until kctx ends, then closes the
	// channel, which must be drained meanwhile.
	renewals, err := cfg.Etcd.KeepAlive(kctx, lease.ID)
	if err != nil {
		return SwitchResult{}, fmt.Errorf("switch: etcd keep-alive: %w", err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for range renewals {
		}
	}()
	defer func() { stopKeepAlive(); <-drained }()
	var res SwitchResult
	for i := range cfg.Flips {
		target := cfg.Members[(i+1)%len(cfg.Members)]
		d, attempts, err := flipOnce(ctx, cfg, lease.ID, target)
		res.Attempts += attempts
		if err != nil {
			return res, fmt.Errorf("flip %d to %s: %w", i+1, target.Name, err)
		}
		res.Latencies = append(res.Latencies, d)
		fmt.Fprintf(progress, "switch: flip %d/%d to %s: %.1f ms (%d sessions)\n", i+1, cfg.Flips, target.Name, float64(d)/1e6, attempts)
	}
	return res, nil
}

func flipOnce(ctx context.Context, cfg SwitchConfig, lease clientv3.LeaseID, target SwitchMember) (time.Duration, int, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	ops := make([]clientv3.Op, 0, len(cfg.Members)+2)
	for _, m := range cfg.Members {
		role := cluster.RoleReplica
		if m.Name == target.Name {
			role = cluster.RolePrimary
		}
		lag := int64(0)
		rec, err := cluster.MarshalMember(cluster.Member{Name: m.Name, Role: role, Host: m.Host, Port: m.Port, LagBytes: &lag, UpdatedAt: time.Now().UTC()})
		if err != nil {
			return 0, 0, err
		}
		ops = append(ops, clientv3.OpPut(cfg.Keys.Member(m.Name), string(rec), clientv3.WithLease(lease)))
	}
	// The old leader's key goes first (its lease expired, or it resigned),
	// then the new leader creates it: a new create revision, a new epoch,
	// as a campaign makes. etcd refuses both in one transaction.
	if _, err := cfg.Etcd.Delete(ctx, cfg.Keys.Leader()); err != nil {
		return 0, 0, fmt.Errorf("etcd delete leader: %w", err)
	}
	ops = append(ops, clientv3.OpPut(cfg.Keys.Leader(), target.Name, clientv3.WithLease(lease)))
	start := time.Now()
	if _, err := cfg.Etcd.Txn(ctx).Then(ops...).Commit(); err != nil {
		return 0, 0, fmt.Errorf("etcd write: %w", err)
	}
	attempts := 0
	for {
		attempts++
		port, err := rwPort(ctx, cfg.RWDSN)
		if err == nil && port == target.Port {
			return time.Since(start), attempts, nil
		}
		if ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("still routed to port %d", port)
			}
			return 0, attempts, fmt.Errorf("no rw session on the new leader within %s: %w", cfg.Timeout, err)
		}
	}
}

// rwPort opens a fresh session and returns the server port it reached.
func rwPort(ctx context.Context, dsn string) (int, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var port int
	err = conn.QueryRow(ctx, "SELECT inet_server_port()", pgx.QueryExecModeSimpleProtocol).Scan(&port)
	return port, err
}
