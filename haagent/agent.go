package haagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/restapi"
	"github.com/pharos-ha/pharos/metrics"
)

// Config is one agent's configuration.
type Config struct {
	Rules    core.Rules
	Postgres PostgresConfig
	// Host is the address other members and the proxy reach PostgreSQL at.
	Host string
	// APIURL is published in the member record (the REST API).
	APIURL string
	// StartTimeout bounds one start of PostgreSQL (crash recovery
	// included).
	StartTimeout time.Duration
	// StopTimeout bounds a clean stop when the agent shuts down.
	StopTimeout time.Duration
	// Cluster is the cluster's name, passed to callbacks.
	Cluster   string
	Callbacks Callbacks
	// Metrics receives the agent's metrics; nil: a private registry.
	Metrics *metrics.Agent
	// WatchdogMode and Watchdog: the driver armed before this member
	// leads (nil with mode off).
	WatchdogMode core.WatchdogMode
	Watchdog     Watchdog
}

// Agent runs the HA loop of one node.
type Agent struct {
	// Static after construction.
	cfg   Config
	rules core.Rules
	dcs   *dcs
	pg    *postgres
	log   *slog.Logger
	now   func() time.Time
	wake  chan struct{}
	cb    *callbackRunner
	m     *metrics.Agent
	wd    *guard

	// status is what the REST API answers, replaced by the loop.
	status   atomic.Pointer[restapi.NodeStatus]
	requests chan apiRequest

	// lease owns its keep-alive goroutine; the loop reads it.
	lease *lease
	// Written by the watch goroutine, read by the loop.
	leaderGoneRev atomic.Int64 // revision of the last leader deletion the watch saw

	// Owned by the loop (Run), not thread-safe.
	epoch      int64 // leader key create revision while this member leads
	view       core.DCSView
	mem        core.Memory
	seen       map[string]seenRecord
	lastPlan   string
	lastLeader string
	switchRev  int64 // revision of the switchover key in the last view
	switchSeen time.Time
	maxLag     *int64 // maximum_lag_on_failover from the dynamic configuration
	// dynamic are the dynamic configuration's PostgreSQL parameters, as
	// the last read of etcd saw them.
	dynamic map[string]string
	// syncNames is what synchronous_standby_names names on this primary:
	// the server's as last observed, or as a step last set it.
	syncNames []string
	lastRole  cluster.Role
	planSince time.Time // when lastPlan was first decided
	waitLog   throttle  // reminders of a plan that waits with the server down
}

type seenRecord struct {
	rev int64
	at  time.Time
}

// New checks cfg and returns an agent that uses cli (owned by the caller).
func New(cfg Config, cli *clientv3.Client, keys cluster.Keys, log *slog.Logger) (*Agent, error) {
	if err := cfg.Rules.Validate(); err != nil {
		return nil, err
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = time.Minute
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	cfg.Postgres.Name = cfg.Rules.Name
	if cfg.Postgres.DataDir == "" || cfg.Postgres.Port == 0 || cfg.Postgres.BinDir == "" {
		return nil, errors.New("postgres: data_dir, pg_port and bin_dir are required")
	}
	if cfg.Postgres.SuperUser == "" || cfg.Postgres.ReplicationUser == "" {
		return nil, errors.New("postgres: superuser and replication user names are required")
	}
	if err := CheckRequireAuth(cfg.Postgres.RequireAuth); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("member", cfg.Rules.Name)
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewAgent(prometheus.NewRegistry())
	}
	// Every action's failure series exists from the start, so that the
	// first failure is an increase an alert can see, not a new series.
	for _, k := range core.ActionKinds() {
		cfg.Metrics.ActionFailures.WithLabelValues(k.String())
	}
	for _, r := range core.RecloneReasons {
		cfg.Metrics.Reclones.WithLabelValues(r)
	}
	if cfg.WatchdogMode == "" {
		cfg.WatchdogMode = core.WatchdogOff
	}
	if cfg.WatchdogMode != core.WatchdogOff && cfg.Watchdog == nil {
		return nil, fmt.Errorf("watchdog %s: no driver", cfg.WatchdogMode)
	}
	cfg.Rules.WatchdogRequired = cfg.WatchdogMode == core.WatchdogRequired
	a := &Agent{
		m:        cfg.Metrics,
		cfg:      cfg,
		rules:    cfg.Rules,
		dcs:      &dcs{cli: cli, keys: keys, name: cfg.Rules.Name, ttl: cfg.Rules.Timing.TTL},
		pg:       newPostgres(cfg.Postgres, log),
		log:      log,
		now:      time.Now,
		wake:     make(chan struct{}, 1),
		requests: make(chan apiRequest),
		seen:     map[string]seenRecord{},
		waitLog:  throttle{every: waitLogEvery},
		cb:       newCallbackRunner(cfg.Callbacks, cfg.Rules.Name, cfg.Cluster, log),
		wd:       &guard{mode: cfg.WatchdogMode, wd: cfg.Watchdog, timeout: cfg.Rules.Timing.FenceAfter()},
	}
	a.lease = &lease{dcs: a.dcs, timing: cfg.Rules.Timing, now: func() time.Time { return a.now() }, log: log, wake: a.poke, renewed: a.fed}
	return a, nil
}

func (a *Agent) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *Agent) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.rules.Timing.RetryTimeout)
}

// Run runs the loop until ctx ends, then shuts down: a leader stops
// PostgreSQL cleanly first and releases the key after, so a replica with
// all the WAL takes over without waiting for the lease to expire.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.join(ctx); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { a.lease.keepAlive(gctx); return nil })
	g.Go(func() error { a.watchLoop(gctx); return nil })
	g.Go(func() error { a.postmasterLoop(gctx); return nil })
	g.Go(func() error { a.loop(gctx); return nil })
	g.Go(func() error { a.cb.run(gctx); return nil })
	err := g.Wait()
	a.shutdown()
	return err
}

// shutdown stops PostgreSQL cleanly, then releases the key and the lease.
// It runs after ctx ended, with its own bounded contexts.
func (a *Agent) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StopTimeout+a.cb.cfg.Timeout+5*time.Second)
	defer cancel()
	wasRunning := a.pg.postmasterPid() != 0
	if err := a.pg.stop(ctx, a.cfg.StopTimeout); err != nil {
		a.log.Error("stop PostgreSQL", "err", err)
	} else {
		a.log.Info("PostgreSQL stopped")
		a.disarmWatchdog()
		// The runner is gone with the loop: run on_stop here, bounded.
		if wasRunning && a.cfg.Callbacks.OnStop != "" {
			a.cb.exec(ctx, callbackJob{"on_stop", a.lastRole})
		}
	}
	cctx, ccancel := a.callCtx(ctx)
	defer ccancel()
	if a.epoch != 0 {
		switch released, err := a.dcs.release(cctx, a.epoch); {
		case err != nil:
			a.log.Warn("release leader key", "err", err)
		case released:
			a.log.Info("leader key released", "epoch", a.epoch)
		default:
			a.log.Warn("leader key not released: it is no longer this member's (lease expired or another member leads)", "epoch", a.epoch)
		}
	}
	if lease := a.lease.ID(); lease != 0 {
		if err := a.dcs.revoke(cctx, lease); err != nil {
			a.log.Warn("revoke lease", "err", err)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
