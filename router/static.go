package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/pharos-ha/pharos/metrics"
)

// StaticConfig describes a fixed list of backends whose roles are learned by
// health checks alone (no etcd).
type StaticConfig struct {
	// Backends are host:port addresses; each is also the member's name.
	Backends []string
	// Interval between health-check rounds. A backend that stops answering
	// is excluded at most Interval+Timeout after its last good answer.
	Interval time.Duration
	// Timeout bounds one check, connection included; it must be below
	// Interval so rounds never overlap.
	Timeout time.Duration
	// User, Password and Database the checks log in with. Password is never
	// logged.
	User, Password, Database string
	// SSLMode for the check connections (libpq semantics: disable, prefer,
	// require, verify-ca, verify-full).
	SSLMode string
	// RequireAuth is libpq's require_auth for the check connections: the
	// authentication methods a backend may ask for before it gets the
	// password. Empty: DefaultRequireAuth.
	RequireAuth string
}

// DefaultRequireAuth lets only a backend that proves it knows the
// password's verifier (SCRAM) near the health password; one asking for
// the password itself (cleartext, md5) gets nothing.
const DefaultRequireAuth = "scram-sha-256"

// Validate reports the first setting that cannot work, naming it.
func (c StaticConfig) Validate() error {
	if len(c.Backends) == 0 {
		return fmt.Errorf("backends: at least one host:port is required for the static source")
	}
	for _, b := range c.Backends {
		host, port, err := net.SplitHostPort(b)
		if err != nil || host == "" {
			return fmt.Errorf("backends: %q is not host:port", b)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("backends: %q has an invalid port", b)
		}
	}
	if c.Interval <= 0 {
		return fmt.Errorf("health_check_interval: must be positive")
	}
	if c.Timeout <= 0 || c.Timeout >= c.Interval {
		return fmt.Errorf("health_check_timeout: must be positive and below health_check_interval (%s)", c.Interval)
	}
	if c.User == "" {
		return fmt.Errorf("health_user: required for the static source")
	}
	if c.RequireAuth != "" {
		if _, err := pgconn.ParseConfig("require_auth=" + quoteConnValue(c.RequireAuth)); err != nil {
			var pe *pgconn.ParseConfigError
			if errors.As(err, &pe) && pe.Unwrap() != nil {
				err = pe.Unwrap()
			}
			return fmt.Errorf("health_require_auth: %q: %w", c.RequireAuth, err)
		}
	}
	return nil
}

// Static is a topology source over a fixed host list: a backend not in
// recovery is the primary, one in recovery a replica, one that does not
// answer is unhealthy. Two backends not in recovery at once is split-brain
// and rw is refused until it ends.
type Static struct {
	// Static after construction.
	cfg     StaticConfig
	log     *slog.Logger
	metrics *metrics.Proxy

	// Owned by Run (or the HealthChecker's one caller).
	conns map[string]*pgx.Conn
	// failSeries are the members with a HealthCheckError series, so that
	// one no longer checked loses it.
	failSeries map[string]bool
}

// NewStatic returns a static source; it does nothing until Run.
func NewStatic(cfg StaticConfig, log *slog.Logger, m *metrics.Proxy) (*Static, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Static{cfg: cfg, log: log, metrics: m, conns: make(map[string]*pgx.Conn), failSeries: make(map[string]bool)}, nil
}

// checkResult is what one round learned about one backend.
type checkResult struct {
	ok        bool
	inRecover bool
	lsn       uint64 // current WAL position on a primary, replay position on a replica
}

// Run checks every backend each Interval and feeds r, until ctx ends.
func (s *Static) Run(ctx context.Context, r *Router) error {
	defer s.closeConns()
	ticker := time.NewTicker(s.cfg.Interval)
	defer ticker.Stop()
	prev := make(map[string]bool)
	for {
		snap := s.round(ctx)
		if ctx.Err() != nil {
			return nil
		}
		for _, m := range snap.Members {
			if was, known := prev[m.Name]; !known || was != m.Healthy {
				s.log.Info("backend health", "backend", m.Name, "healthy", m.Healthy, "role", m.Role)
			}
			prev[m.Name] = m.Healthy
		}
		r.Update(snap)
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// round checks all backends concurrently and builds a snapshot.
func (s *Static) round(ctx context.Context) Snapshot {
	targets := make([]HealthTarget, len(s.cfg.Backends))
	for i, addr := range s.cfg.Backends {
		targets[i] = HealthTarget{Name: addr, Addr: addr}
	}
	results := s.checkAll(ctx, targets)

	snap := Snapshot{}
	var primaryLSN uint64
	for i, addr := range s.cfg.Backends {
		res := results[i]
		m := Member{Name: addr, Addr: addr, Role: RoleUnknown, Healthy: res.ok, LagBytes: -1}
		if res.ok {
			if res.inRecover {
				m.Role = RoleReplica
			} else {
				m.Role = RolePrimary
				snap.Conflict = append(snap.Conflict, addr)
				primaryLSN = res.lsn
			}
		}
		snap.Members = append(snap.Members, m)
	}
	if len(snap.Conflict) == 1 {
		snap.Primary = snap.Conflict[0]
		for i, res := range results {
			if res.ok && res.inRecover {
				lag := int64(0)
				if primaryLSN > res.lsn {
					lag = int64(primaryLSN - res.lsn)
				}
				snap.Members[i].LagBytes = lag
			}
		}
	}
	if len(snap.Conflict) < 2 {
		snap.Conflict = nil
	}
	return snap
}

// HealthTarget is a member to check: its name labels the metrics, its
// address is dialled.
type HealthTarget struct {
	Name, Addr string
}

// checkAll checks targets concurrently, keeping one connection per address
// for the next round and closing those of addresses no longer checked; a
// member no longer checked also loses its failure series.
func (s *Static) checkAll(ctx context.Context, targets []HealthTarget) []checkResult {
	results := make([]checkResult, len(targets))
	conns := make([]*pgx.Conn, len(targets))
	addrs := make([]string, len(targets))
	for i, tg := range targets {
		conns[i] = s.conns[tg.Addr]
		addrs[i] = tg.Addr
	}
	var mu sync.Mutex // guards s.conns and s.failSeries across the round's goroutines
	var g errgroup.Group
	for i, tg := range targets {
		addr := tg.Addr
		conn := conns[i]
		g.Go(func() error {
			res, c := s.check(ctx, tg.Name, addr, conn)
			results[i] = res
			mu.Lock()
			if c == nil {
				delete(s.conns, addr)
			} else {
				s.conns[addr] = c
			}
			if !res.ok {
				s.failSeries[tg.Name] = true
			}
			mu.Unlock()
			return nil
		})
	}
	_ = g.Wait()
	// Every name whose check failed this round or before is in
	// failSeries; those no longer checked lose their series. A round that
	// was under way when the member left may have re-created it after the
	// router deleted it; this is where it goes for good.
	for name := range s.failSeries {
		if !slices.ContainsFunc(targets, func(tg HealthTarget) bool { return tg.Name == name }) {
			s.metrics.HealthCheckError.DeleteLabelValues(name)
			delete(s.failSeries, name)
		}
	}
	for addr, c := range s.conns {
		if !slices.Contains(addrs, addr) {
			closeCtx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			_ = c.Close(closeCtx)
			cancel()
			delete(s.conns, addr)
		}
	}
	return results
}

// HealthChecker runs the static source's checks against the members an
// etcd source names. It can only exclude: a member that fails is taken out
// of routing, one that passes gets nothing etcd did not give it.
type HealthChecker struct {
	static *Static
}

// NewHealthChecker validates cfg (its Backends are ignored) and returns a
// checker.
func NewHealthChecker(cfg StaticConfig, log *slog.Logger, m *metrics.Proxy) (*HealthChecker, error) {
	cfg.Backends = []string{"127.0.0.1:1"} // validated per round instead
	s, err := NewStatic(cfg, log, m)
	if err != nil {
		return nil, err
	}
	s.cfg.Backends = nil
	return &HealthChecker{static: s}, nil
}

// Interval is the time between rounds.
func (h *HealthChecker) Interval() time.Duration { return h.static.cfg.Interval }

// Round checks targets once and returns the addresses that did not
// answer. The failure series of a member not in targets (it left) is
// deleted. Not safe for concurrent use: one owner runs the rounds.
func (h *HealthChecker) Round(ctx context.Context, targets []HealthTarget) map[string]bool {
	results := h.static.checkAll(ctx, targets)
	failed := make(map[string]bool)
	for i, tg := range targets {
		if !results[i].ok {
			failed[tg.Addr] = true
		}
	}
	return failed
}

// Close closes the checks' connections.
func (h *HealthChecker) Close() { h.static.closeConns() }

const checkQuery = `SELECT pg_is_in_recovery(),
	(CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_lsn() END
	 - '0/0'::pg_lsn)::bigint`

// check runs one health check, reusing conn when it is still good. It
// returns the connection to keep, or nil when it was closed.
func (s *Static) check(ctx context.Context, name, addr string, conn *pgx.Conn) (checkResult, *pgx.Conn) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	var err error
	if conn == nil {
		conn, err = s.connect(ctx, addr)
		if err != nil {
			s.fail(ctx, name, addr, err)
			return checkResult{}, nil
		}
	}
	var res checkResult
	var lsn int64
	if err = conn.QueryRow(ctx, checkQuery).Scan(&res.inRecover, &lsn); err != nil {
		s.fail(ctx, name, addr, err)
		closeCtx, cancelClose := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancelClose()
		_ = conn.Close(closeCtx)
		return checkResult{}, nil
	}
	res.ok = true
	res.lsn = uint64(lsn)
	return res, conn
}

func (s *Static) connect(ctx context.Context, addr string) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	sslmode := s.cfg.SSLMode
	if sslmode == "" {
		sslmode = "prefer"
	}
	db := s.cfg.Database
	if db == "" {
		db = "postgres"
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=%s application_name=pharos-health",
		quoteConnValue(host), port, quoteConnValue(s.cfg.User), quoteConnValue(db), quoteConnValue(sslmode)))
	if err != nil {
		return nil, fmt.Errorf("health check settings: %w", err)
	}
	// Set apart from the string so it needs no quoting and never shows up in
	// a parse error.
	cfg.Password = s.cfg.Password
	// After parsing, so that no PGREQUIREAUTH in the environment widens
	// it.
	cfg.RequireAuth = s.cfg.RequireAuth
	if cfg.RequireAuth == "" {
		cfg.RequireAuth = DefaultRequireAuth
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	return pgx.ConnectConfig(ctx, cfg)
}

// quoteConnValue quotes a libpq keyword/value connection string value.
func quoteConnValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func (s *Static) fail(ctx context.Context, name, addr string, err error) {
	if context.Cause(ctx) == context.Canceled {
		return // shutting down, not a failed check
	}
	s.metrics.HealthCheckError.WithLabelValues(name).Inc()
	s.log.Debug("health check failed", "backend", name, "addr", addr, "err", err)
}

func (s *Static) closeConns() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for addr, c := range s.conns {
		_ = c.Close(ctx)
		delete(s.conns, addr)
	}
}
