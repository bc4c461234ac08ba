package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/pharos-ha/pharos/haagent"
	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdclient"
	"github.com/pharos-ha/pharos/internal/restapi"
	"github.com/pharos-ha/pharos/metrics"
)

// runAgent runs the HA agent until SIGTERM or SIGINT, then stops
// PostgreSQL cleanly and hands the leadership over.
func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	s, err := parseAgentArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "pharos agent:", err)
		return exitUsage
	}
	log, err := newLogger(stderr, s.LogLevel)
	if err != nil {
		fmt.Fprintln(stderr, "pharos agent:", err)
		return exitUsage
	}
	// SIGHUP's default action is to exit, which for the agent would be a
	// stop without the hand-over (and a `systemctl reload` or a closing
	// terminal sends one). The agent reads its settings once; it says so
	// instead of dying.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	hupCtx, stopHup := context.WithCancel(ctx)
	hupDone := make(chan struct{})
	go func() {
		defer close(hupDone)
		for {
			select {
			case <-hup:
				log.Warn("SIGHUP ignored: the agent reads its flags and config file only at start; restart it to apply them (dynamic settings: pharos ctl edit-config)")
			case <-hupCtx.Done():
				return
			}
		}
	}()
	defer func() { stopHup(); <-hupDone }()
	cfg, ecfg, keys, err := s.agentConfig(ctx, log)
	if err != nil {
		fmt.Fprintln(stderr, "pharos agent:", err)
		var ue *usageError
		if errors.As(err, &ue) {
			return exitUsage
		}
		return exitFailure
	}
	reg := metrics.NewRegistry()
	metrics.RegisterBuildInfo(reg, "agent", version)
	cfg.Metrics = metrics.NewAgent(reg)
	// The REST API listens first, so that a taken port fails before
	// anything else starts; it answers "starting" until the agent exists.
	backend := &lateBackend{}
	var api *restapi.Server
	if s.APIListen != "" {
		acfg, err := s.apiConfig(4 * cfg.Rules.Timing.TTL)
		if err != nil {
			fmt.Fprintln(stderr, "pharos agent:", err)
			return exitUsage
		}
		acfg.Metrics = metrics.Handler(reg)
		if api, err = restapi.New(acfg, backend, log); err != nil {
			fmt.Fprintln(stderr, "pharos agent: api:", err)
			return exitUsage
		}
		if err := api.Listen(); err != nil {
			fmt.Fprintln(stderr, "pharos agent: api_listen:", err)
			return exitUsage
		}
	}
	// Every secret is read: none stays in the environment that PostgreSQL,
	// the callbacks and the watchdog process inherit.
	scrubSecretEnv()
	cli, err := etcdclient.New(ecfg)
	if err != nil {
		fmt.Fprintln(stderr, "pharos agent: etcd:", err)
		return exitUsage
	}
	defer cli.Close()
	agent, err := haagent.New(cfg, cli, keys, log)
	if err != nil {
		fmt.Fprintln(stderr, "pharos agent:", err)
		return exitUsage
	}
	backend.set(agent.API())
	return serveAgent(ctx, agent, api, log, s, cfg, stderr)
}

// serveAgent runs the agent and its REST API until SIGTERM or SIGINT.
func serveAgent(ctx context.Context, agent *haagent.Agent, api *restapi.Server, log *slog.Logger, s agentSettings, cfg haagent.Config, stderr io.Writer) int {
	// SIGTERM is the service manager's stop: a clean hand-over.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("agent starting", "cluster", s.Cluster, "data_dir", s.DataDir, "pg_port", s.PGPort,
		"ttl", cfg.Rules.Timing.TTL, "loop_wait", cfg.Rules.Timing.LoopWait, "watchdog", cfg.WatchdogMode, "api", s.APIListen)
	g, gctx := errgroup.WithContext(ctx)
	apiCtx, stopAPI := context.WithCancel(context.WithoutCancel(ctx))
	if api != nil {
		g.Go(func() error { return api.Serve(apiCtx) })
	}
	g.Go(func() error {
		// The API keeps answering while the agent hands over; it stops
		// after.
		defer stopAPI()
		return agent.Run(gctx)
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "pharos agent:", err)
		// A name that clashes with a member's is a bad setting, found
		// only once etcd answers.
		var conflict *core.NameConflictError
		if errors.As(err, &conflict) {
			return exitUsage
		}
		return exitFailure
	}
	return exitOK
}

// lateBackend lets the REST API listen before the agent exists; until
// then (and after the agent stopped) every call answers as "starting".
type lateBackend struct {
	mu sync.Mutex
	b  restapi.Backend
}

func (l *lateBackend) set(b restapi.Backend) { l.mu.Lock(); l.b = b; l.mu.Unlock() }
func (l *lateBackend) get() restapi.Backend {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b
}

var errNotReady = fmt.Errorf("%w: the agent is starting", restapi.ErrConflict)

func (l *lateBackend) Status() restapi.NodeStatus {
	if b := l.get(); b != nil {
		return b.Status()
	}
	return restapi.NodeStatus{Role: cluster.RoleStarting, LagBytes: -1}
}
func (l *lateBackend) Cluster(ctx context.Context, authenticated bool) (any, error) {
	if b := l.get(); b != nil {
		return b.Cluster(ctx, authenticated)
	}
	return nil, errNotReady
}
func (l *lateBackend) History(ctx context.Context) (cluster.History, error) {
	if b := l.get(); b != nil {
		return b.History(ctx)
	}
	return nil, errNotReady
}
func (l *lateBackend) Switchover(ctx context.Context, r restapi.SwitchoverRequest) error {
	if b := l.get(); b != nil {
		return b.Switchover(ctx, r)
	}
	return errNotReady
}
func (l *lateBackend) Failover(ctx context.Context, r restapi.SwitchoverRequest) error {
	if b := l.get(); b != nil {
		return b.Failover(ctx, r)
	}
	return errNotReady
}
func (l *lateBackend) Restart(ctx context.Context) error {
	if b := l.get(); b != nil {
		return b.Restart(ctx)
	}
	return errNotReady
}
func (l *lateBackend) Reinitialize(ctx context.Context) error {
	if b := l.get(); b != nil {
		return b.Reinitialize(ctx)
	}
	return errNotReady
}
