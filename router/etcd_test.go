package router_test

// The etcd topology sources (DESIGN §3-4) against real embedded etcd: keys
// are written as an agent (or Patroni) writes them, and a router fed by
// router.Etcd must route as the rules say. No PostgreSQL: the router never
// dials, so member records name made-up ports.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdclient"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
)

const (
	// etcdBound bounds every wait for a change to reach the router; it only
	// says "did not hang".
	etcdBound = 10 * time.Second
	// etcdRecoverBound bounds the wait for a source to reach an etcd member
	// that came back: gRPC's reconnect backoff grows to seconds.
	etcdRecoverBound = 20 * time.Second
	// etcdProbe is the sources' probe interval.
	etcdProbe = 200 * time.Millisecond
	// maxLag is the routers' max_lag where a case sets one.
	maxLag = 1 << 20
)

// --- etcd and its clients ---

// startEtcd starts an embedded etcd cluster, closed when the test ends.
func startEtcd(t *testing.T, members int) *etcdlocal.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := etcdlocal.Start(ctx, etcdlocal.Options{Members: members})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close etcd: %v", err)
		}
	})
	return c
}

// etcdClient connects to endpoints as the proxy does; closed at test end.
func etcdClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := etcdclient.New(etcdclient.Config{Endpoints: endpoints})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// hostPort strips the scheme of an etcd endpoint URL.
func hostPort(endpoint string) string {
	return strings.TrimPrefix(endpoint, "http://")
}

// --- a fake agent: writes keys as pharos agents (or Patroni) do ---

type agent struct {
	t     *testing.T
	cli   *clientv3.Client
	lease clientv3.LeaseID
}

// newAgent grants the lease its keys live on; it outlives the test.
func newAgent(t *testing.T, cli *clientv3.Client) *agent {
	t.Helper()
	a := &agent{t: t, cli: cli}
	a.retry("grant lease", func(ctx context.Context) error {
		resp, err := cli.Grant(ctx, 600)
		if err == nil {
			a.lease = resp.ID
		}
		return err
	})
	return a
}

// retry runs op until it succeeds, each attempt bounded, for at most
// etcdBound: a write in flight while an etcd member stops or an election
// runs may fail once, and clientv3 does not retry mutations.
func (a *agent) retry(what string, op func(ctx context.Context) error) {
	a.t.Helper()
	deadline := time.Now().Add(etcdBound)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := op(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("etcd %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// put writes key on the agent's lease and returns the write's revision.
func (a *agent) put(key, value string) int64 {
	a.t.Helper()
	var rev int64
	a.retry("put "+key, func(ctx context.Context) error {
		resp, err := a.cli.Put(ctx, key, value, clientv3.WithLease(a.lease))
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	return rev
}

func (a *agent) del(key string) {
	a.t.Helper()
	a.retry("delete "+key, func(ctx context.Context) error {
		_, err := a.cli.Delete(ctx, key)
		return err
	})
}

// member publishes a pharos member record.
func (a *agent) member(keys cluster.Keys, m cluster.Member) {
	a.t.Helper()
	rec, err := cluster.MarshalMember(m)
	if err != nil {
		a.t.Fatalf("member record %s: %v", m.Name, err)
	}
	a.put(keys.Member(m.Name), string(rec))
}

// campaign creates the leader key for name as an election does (a txn on
// CreateRevision == 0, on the agent's lease) and returns its create
// revision, the new epoch.
func (a *agent) campaign(leaderKey, name string) int64 {
	a.t.Helper()
	var epoch int64
	a.retry("campaign "+name, func(ctx context.Context) error {
		resp, err := a.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(leaderKey), "=", 0)).
			Then(clientv3.OpPut(leaderKey, name, clientv3.WithLease(a.lease))).
			Else(clientv3.OpGet(leaderKey)).
			Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			epoch = resp.Header.Revision
			return nil
		}
		// An earlier attempt that reported an error may have won.
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 && string(kvs[0].Value) == name {
			epoch = kvs[0].CreateRevision
			return nil
		}
		a.t.Fatalf("campaign %s: leader key already held", name)
		return nil
	})
	return epoch
}

// flip hands leadership to name: the old leader key goes (lease expired or
// resigned), then name campaigns.
func (a *agent) flip(leaderKey, name string) int64 {
	a.t.Helper()
	a.del(leaderKey)
	return a.campaign(leaderKey, name)
}

// rec is a pharos member record on 127.0.0.1; lag < 0 is unknown.
func rec(name string, role cluster.Role, lag int64) cluster.Member {
	return cluster.Member{Name: name, Role: role, Host: "127.0.0.1", Port: portOf(name), LagBytes: &lag}
}

// portOf gives each made-up member name a stable made-up port.
func portOf(name string) int {
	p := 20000
	for _, c := range name {
		p = (p*31 + int(c)) % 40000
	}
	return 20000 + p
}

func pharosKeys(t *testing.T, clusterName string) cluster.Keys {
	t.Helper()
	k, err := cluster.NewKeys(clusterName)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// --- a running source ---

// syncFormat wraps the Format under test to let the test know what the
// source has applied: it records the mod revision of a marker key (outside
// the layout, so every format ignores it) in each snapshot it is asked for.
// It can also hold the source's first snapshot until the test releases it.
type syncFormat struct {
	router.Format
	marker string

	hold     chan struct{} // nil: no hold
	held     chan struct{} // closed when the first snapshot waits on hold
	holdOnce sync.Once

	mu      sync.Mutex
	seen    int64         // guarded by mu: highest marker revision in a snapshot
	changed chan struct{} // guarded by mu: closed and replaced at each snapshot
}

func (f *syncFormat) Snapshot(kvs map[string]router.KeyValue) (router.Snapshot, int64) {
	if f.hold != nil {
		f.holdOnce.Do(func() {
			close(f.held)
			<-f.hold
		})
	}
	f.mu.Lock()
	if kv, ok := kvs[f.marker]; ok && kv.ModRevision > f.seen {
		f.seen = kv.ModRevision
	}
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	return f.Format.Snapshot(kvs)
}

// waitSeen waits until a snapshot has included the marker at rev or later.
func (f *syncFormat) waitSeen(t *testing.T, rev int64) {
	t.Helper()
	timer := time.NewTimer(etcdBound)
	defer timer.Stop()
	for {
		f.mu.Lock()
		seen, ch := f.seen, f.changed
		f.mu.Unlock()
		if seen >= rev {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("source has not applied revision %d after %v (marker seen at %d)", rev, etcdBound, seen)
		}
	}
}

type etcdRun struct {
	r      *router.Router
	m      *metrics.Proxy
	reg    *prometheus.Registry
	logs   *logRecorder
	format *syncFormat

	cancel   context.CancelFunc
	exited   chan struct{} // closed when Run has returned
	err      error         // Run's result; read once exited is closed
	stopOnce sync.Once
}

type sourceOptions struct {
	Router router.Config
	// Format builds the format under test with the run's logger.
	Format func(log *slog.Logger) router.Format
	// HoldFirstSnapshot makes the source wait in its first snapshot (after
	// its first Get) until release is called.
	HoldFirstSnapshot bool
}

func pharosFormat(keys cluster.Keys) func(*slog.Logger) router.Format {
	return func(log *slog.Logger) router.Format { return router.NewPharosFormat(keys, log) }
}

// runEtcd runs an etcd source on cli feeding a fresh router, until the test
// ends.
func runEtcd(t *testing.T, cli *clientv3.Client, opts sourceOptions) *etcdRun {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.NewProxy(reg)
	m.RegisterEtcd(reg)
	log, logs := newTestLog(t)
	format := opts.Format(log)
	f := &syncFormat{Format: format, marker: format.Prefix() + "test-sync", changed: make(chan struct{})}
	if opts.HoldFirstSnapshot {
		f.hold, f.held = make(chan struct{}), make(chan struct{})
	}
	r := router.New(opts.Router, log, m)
	src := router.NewEtcd(cli, f, etcdProbe, log, m)
	ctx, cancel := context.WithCancel(context.Background())
	run := &etcdRun{r: r, m: m, reg: reg, logs: logs, format: f, cancel: cancel, exited: make(chan struct{})}
	go func() {
		run.err = src.Run(ctx, r)
		close(run.exited)
	}()
	t.Cleanup(func() { run.stop(t) })
	return run
}

// waitHeld waits until a source run with HoldFirstSnapshot has read the
// prefix and stopped in its first snapshot.
func (s *etcdRun) waitHeld(t *testing.T) {
	t.Helper()
	select {
	case <-s.format.held:
	case <-time.After(etcdBound):
		t.Fatal("source never took its first snapshot")
	}
}

// release lets a held first snapshot proceed; safe to call more than once.
func (s *etcdRun) release() {
	if s.format.hold != nil {
		select {
		case <-s.format.hold:
		default:
			close(s.format.hold)
		}
	}
}

// stop ends the source and checks that Run returns nil promptly.
func (s *etcdRun) stop(t *testing.T) {
	t.Helper()
	s.stopOnce.Do(func() {
		s.release()
		s.cancel()
		select {
		case <-s.exited:
			if s.err != nil {
				t.Errorf("etcd source Run: %v", s.err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("etcd source Run did not return within 5s of its context ending")
		}
	})
}

// running reports whether Run has not returned.
func (s *etcdRun) running() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// sync returns once the source has applied every write a made before the
// call. It writes the marker and waits until a snapshot includes it, then
// writes it again and waits for that too: the second write arrives in a
// later watch response, so by the time its snapshot is asked for, the
// router update that followed the first has finished.
func (s *etcdRun) sync(t *testing.T, a *agent) {
	t.Helper()
	for i := range 2 {
		rev := a.put(s.format.marker, strconv.Itoa(i))
		s.format.waitSeen(t, rev)
	}
}

// --- checks ---

// waitRoutes waits, at most bound, until the router's rw target and ro set
// (in any order) are as wanted.
func waitRoutes(t *testing.T, r *router.Router, bound time.Duration, what, wantRW string, wantRO ...string) {
	t.Helper()
	timer := time.NewTimer(bound)
	defer timer.Stop()
	wantRO = sorted(wantRO)
	for {
		ch := r.Changed()
		rw, ro := r.Current()
		if rw == wantRW && slices.Equal(sorted(ro), wantRO) {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("%s: after %v rw = %q, ro = %v; want rw = %q, ro = %v", what, bound, rw, ro, wantRW, wantRO)
		}
	}
}

// routesNow checks the router's routes as they are now.
func routesNow(t *testing.T, r *router.Router, what, wantRW string, wantRO ...string) {
	t.Helper()
	rw, ro := r.Current()
	if rw != wantRW || !slices.Equal(sorted(ro), sorted(wantRO)) {
		t.Errorf("%s: rw = %q, ro = %v; want rw = %q, ro = %v", what, rw, ro, wantRW, sorted(wantRO))
	}
}

func waitEpoch(t *testing.T, s *etcdRun, want int64) {
	t.Helper()
	waitMetric(t, etcdBound, "pharos_router_leader_epoch", s.m.LeaderEpoch, func(v float64) bool { return v == float64(want) })
}

// routeSwitches is the number of observations of
// pharos_router_route_switch_seconds.
func routeSwitches(t *testing.T, reg *prometheus.Registry) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "pharos_router_route_switch_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

// backendSeries lists the backend label values of a metric as exported.
func backendSeries(t *testing.T, reg *prometheus.Registry, name string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "backend" {
					out = append(out, l.GetValue())
				}
			}
		}
	}
	return sorted(out)
}

// --- logs ---

type logEntry struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// logRecorder keeps every record a test's logger handled.
type logRecorder struct {
	mu      sync.Mutex
	entries []logEntry
}

// count returns how many records have a message starting with msg and
// the given attributes (key, value pairs).
func (l *logRecorder) count(msg string, attrs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, e := range l.entries {
		if !strings.HasPrefix(e.msg, msg) {
			continue
		}
		for i := 0; i+1 < len(attrs); i += 2 {
			if e.attrs[attrs[i]] != attrs[i+1] {
				continue next
			}
		}
		n++
	}
	return n
}

// waitLog waits, at most bound, until a record like count's was logged.
func (l *logRecorder) waitLog(t *testing.T, bound time.Duration, msg string, attrs ...string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for l.count(msg, attrs...) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no log %q %v within %v", msg, attrs, bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type recordHandler struct {
	rec   *logRecorder
	attrs []slog.Attr
	out   slog.Handler
}

// newTestLog returns a logger that records every record and writes it to
// the test's output.
func newTestLog(t *testing.T) (*slog.Logger, *logRecorder) {
	rec := &logRecorder{}
	var out io.Writer = t.Output()
	return slog.New(recordHandler{rec: rec, out: slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})}), rec
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h recordHandler) Handle(ctx context.Context, r slog.Record) error {
	e := logEntry{level: r.Level, msg: r.Message, attrs: make(map[string]string)}
	for _, a := range h.attrs {
		e.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		e.attrs[a.Key] = a.Value.String()
		return true
	})
	h.rec.mu.Lock()
	h.rec.entries = append(h.rec.entries, e)
	h.rec.mu.Unlock()
	return h.out.Handle(ctx, r)
}

func (h recordHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return recordHandler{rec: h.rec, attrs: append(slices.Clone(h.attrs), attrs...), out: h.out.WithAttrs(attrs)}
}

func (h recordHandler) WithGroup(name string) slog.Handler {
	return recordHandler{rec: h.rec, attrs: h.attrs, out: h.out.WithGroup(name)}
}

// --- issue 3 §6 cases ---

func TestEtcdLeaderFlip(t *testing.T) {
	t.Parallel()
	ec := startEtcd(t, 1)
	keys := pharosKeys(t, "flip")
	a := newAgent(t, etcdClient(t, ec.Endpoints()...))
	s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{Format: pharosFormat(keys)})

	a.member(keys, rec("n1", cluster.RolePrimary, 0))
	a.member(keys, rec("n2", cluster.RoleReplica, 0))
	a.member(keys, rec("n3", cluster.RoleReplica, 0))
	epoch1 := a.campaign(keys.Leader(), "n1")
	waitRoutes(t, s.r, etcdBound, "first leader", "n1", "n2", "n3")
	waitEpoch(t, s, epoch1)
	old := mustAcquire(t, s.r, router.RW)
	if old.Backend.Name != "n1" || old.Backend.Addr != rec("n1", "", 0).Addr() {
		t.Fatalf("rw route to %s at %s, want n1 at %s", old.Backend.Name, old.Backend.Addr, rec("n1", "", 0).Addr())
	}
	switchesBefore := routeSwitches(t, s.reg)

	// A failover as agents write it: n1's lease ends (leader key gone), n2
	// wins the election, promotes, says so in its record; n1 comes back as
	// a replica.
	a.del(keys.Leader())
	epoch2 := a.campaign(keys.Leader(), "n2")
	s.sync(t, a)
	t.Run("new leader still promoting has no rw yet, the old one is fenced", func(t *testing.T) {
		routesNow(t, s.r, "leader n2 still a replica", "", "n2", "n3")
		if !revoked(old) {
			t.Error("rw route to n1 not revoked once n1 lost the leader key")
		}
	})
	a.member(keys, rec("n2", cluster.RolePrimary, 0))
	a.member(keys, rec("n1", cluster.RoleReplica, 0))
	waitRoutes(t, s.r, etcdBound, "after the flip", "n2", "n1", "n3")

	t.Run("rw switches to the new leader", func(t *testing.T) {
		rt := mustAcquire(t, s.r, router.RW)
		if rt.Backend.Name != "n2" {
			t.Errorf("rw route to %s, want n2", rt.Backend.Name)
		}
	})
	t.Run("route on the old leader revoked", func(t *testing.T) {
		if !revoked(old) {
			t.Error("rw route to n1 not revoked")
		}
	})
	t.Run("leader epoch is the new key's create revision", func(t *testing.T) {
		if epoch2 <= epoch1 {
			t.Fatalf("new epoch %d not above %d", epoch2, epoch1)
		}
		waitEpoch(t, s, epoch2)
	})
	t.Run("route switch observed", func(t *testing.T) {
		// n1 -> none -> n2: at least two switches since the first leader.
		if n := routeSwitches(t, s.reg); n < switchesBefore+2 {
			t.Errorf("pharos_router_route_switch_seconds has %d observations, want at least %d", n, switchesBefore+2)
		}
	})
	t.Run("leader's record moving to another address revokes its routes", func(t *testing.T) {
		rt := mustAcquire(t, s.r, router.RW)
		moved := rec("n2", cluster.RolePrimary, 0)
		moved.Port++
		a.member(keys, moved)
		s.sync(t, a)
		if !revoked(rt) {
			t.Error("rw route to n2's old address not revoked")
		}
		rt2 := mustAcquire(t, s.r, router.RW)
		if rt2.Backend.Addr != moved.Addr() {
			t.Errorf("rw route to %s, want %s", rt2.Backend.Addr, moved.Addr())
		}
	})
}

func TestEtcdNoRWWhileLeaderNotPrimary(t *testing.T) {
	t.Parallel()
	ec := startEtcd(t, 1)
	keys := pharosKeys(t, "promoting")
	a := newAgent(t, etcdClient(t, ec.Endpoints()...))
	s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{Format: pharosFormat(keys)})

	a.member(keys, rec("n2", cluster.RoleReplica, 0))
	epoch := a.campaign(keys.Leader(), "n1")
	s.sync(t, a)

	t.Run("leader key without a record", func(t *testing.T) {
		routesNow(t, s.r, "leader n1 has no record", "", "n2")
		wantNoRoute(t, s.r, router.RW)
		wantGauge(t, "pharos_router_rw_available", s.m.RWAvailable, 0)
		// The epoch is known even without a routable leader.
		waitEpoch(t, s, epoch)
	})

	t.Run("record says starting", func(t *testing.T) {
		a.member(keys, rec("n1", cluster.RoleStarting, -1))
		s.sync(t, a)
		routesNow(t, s.r, "leader n1 starting", "", "n2")
		wantNoRoute(t, s.r, router.RW)
	})

	t.Run("record says demoted or stopped", func(t *testing.T) {
		for _, role := range []cluster.Role{cluster.RoleDemoted, cluster.RoleStopped} {
			a.member(keys, rec("n1", role, -1))
			s.sync(t, a)
			routesNow(t, s.r, "leader n1 "+string(role), "", "n2")
		}
		a.member(keys, rec("n1", cluster.RoleStarting, -1))
	})

	t.Run("waiting rw session gets the leader once it says primary", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), etcdBound)
		defer cancel()
		type result struct {
			rt  *router.Route
			err error
		}
		got := make(chan result, 1)
		go func() {
			rt, err := s.r.Acquire(ctx, router.RW)
			got <- result{rt, err}
		}()
		a.member(keys, rec("n1", cluster.RolePrimary, 0))
		res := <-got
		if res.err != nil {
			t.Fatalf("rw Acquire: %v", res.err)
		}
		defer res.rt.Release()
		if res.rt.Backend.Name != "n1" {
			t.Errorf("rw route to %s, want n1", res.rt.Backend.Name)
		}
		routesNow(t, s.r, "leader n1 primary", "n1", "n2")
	})

	t.Run("primary records without the leader key get no rw", func(t *testing.T) {
		a.del(keys.Leader())
		a.member(keys, rec("n2", cluster.RolePrimary, 0))
		s.sync(t, a)
		routesNow(t, s.r, "no leader key", "")
		wantNoRoute(t, s.r, router.RW)
		waitEpoch(t, s, 0)
	})
}

func TestEtcdROEligibility(t *testing.T) {
	t.Parallel()
	ec := startEtcd(t, 1)
	keys := pharosKeys(t, "ro")
	a := newAgent(t, etcdClient(t, ec.Endpoints()...))
	s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{Router: router.Config{MaxLagBytes: maxLag}, Format: pharosFormat(keys)})

	a.member(keys, rec("n1", cluster.RolePrimary, 0))
	a.member(keys, rec("n2", cluster.RoleReplica, 0))
	a.member(keys, rec("n3", cluster.RoleReplica, 0))
	a.member(keys, rec("n4", cluster.RoleReplica, -1)) // lag unknown: kept
	a.campaign(keys.Leader(), "n1")
	waitRoutes(t, s.r, etcdBound, "start", "n1", "n2", "n3", "n4")

	// One ro session on each replica (least connections spreads them).
	routes := make(map[string]*router.Route)
	for range 3 {
		rt := mustAcquire(t, s.r, router.RO)
		routes[rt.Backend.Name] = rt
	}
	if len(routes) != 3 {
		t.Fatalf("three ro sessions landed on %v, want one per replica", slices.Collect(mapKeys(routes)))
	}

	t.Run("lag above max_lag removes a replica from ro", func(t *testing.T) {
		a.member(keys, rec("n3", cluster.RoleReplica, maxLag+1))
		waitRoutes(t, s.r, etcdBound, "n3 lagging", "n1", "n2", "n4")
		if revoked(routes["n3"]) {
			t.Error("lag revoked n3's existing ro session; it should only stop new ones")
		}
		waitMetric(t, etcdBound, "pharos_backend_lag_bytes{n3}", s.m.BackendLag.WithLabelValues("n3"), func(v float64) bool { return v == maxLag+1 })
	})
	t.Run("lag at max_lag is eligible again", func(t *testing.T) {
		a.member(keys, rec("n3", cluster.RoleReplica, maxLag))
		waitRoutes(t, s.r, etcdBound, "n3 at max_lag", "n1", "n2", "n3", "n4")
	})
	t.Run("noloadbalance tag excludes a replica", func(t *testing.T) {
		m := rec("n2", cluster.RoleReplica, 0)
		m.Tags.NoLoadBalance = true
		a.member(keys, m)
		waitRoutes(t, s.r, etcdBound, "n2 noloadbalance", "n1", "n3", "n4")
		if revoked(routes["n2"]) {
			t.Error("noloadbalance revoked n2's existing ro session")
		}
		for range 4 {
			if rt := mustAcquire(t, s.r, router.RO); rt.Backend.Name == "n2" {
				t.Fatal("new ro session on n2 tagged noloadbalance")
			}
		}
	})
	t.Run("a replica whose record goes loses its ro sessions", func(t *testing.T) {
		a.del(keys.Member("n4"))
		waitRoutes(t, s.r, etcdBound, "n4 gone", "n1", "n3")
		if !revoked(routes["n4"]) {
			t.Error("ro session on departed n4 not revoked")
		}
	})
	// The two below keep sessions through an exclusion by lag or tag first
	// (which only stops new sessions), then lose the replica.
	t.Run("a replica that stops after a lag episode loses its ro sessions", func(t *testing.T) {
		a.member(keys, rec("n3", cluster.RoleStopped, -1))
		waitRoutes(t, s.r, etcdBound, "n3 stopped", "n1")
		if !revoked(routes["n3"]) {
			t.Error("ro session on n3 (acquired before n3 lagged and came back) not revoked when n3 stopped")
		}
	})
	t.Run("a noloadbalance replica whose record goes loses its ro sessions", func(t *testing.T) {
		a.del(keys.Member("n2"))
		s.sync(t, a)
		routesNow(t, s.r, "n2 gone", "n1")
		if got := backendSeries(t, s.reg, "pharos_backend_up"); !slices.Equal(got, []string{"n1", "n3"}) {
			t.Errorf("backends: %v, want [n1 n3]", got)
		}
		if !revoked(routes["n2"]) {
			t.Error("ro session on n2 (kept through its noloadbalance tag) not revoked when n2 left the cluster")
		}
	})
}

func TestEtcdOutage(t *testing.T) {
	t.Parallel()
	t.Run("single member: last topology keeps serving", func(t *testing.T) {
		t.Parallel()
		ec := startEtcd(t, 1)
		keys := pharosKeys(t, "outage")
		a := newAgent(t, etcdClient(t, ec.Endpoints()...))
		s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{Format: pharosFormat(keys)})
		a.member(keys, rec("n1", cluster.RolePrimary, 0))
		a.member(keys, rec("n2", cluster.RoleReplica, 0))
		a.campaign(keys.Leader(), "n1")
		waitRoutes(t, s.r, etcdBound, "start", "n1", "n2")
		waitMetric(t, etcdBound, "pharos_proxy_etcd_up", s.m.EtcdUp, func(v float64) bool { return v == 1 })
		rt := mustAcquire(t, s.r, router.RW)
		s.sync(t, a) // the watch is open: see the next subtest for why that matters

		if err := ec.StopMember(0); err != nil {
			t.Fatalf("StopMember: %v", err)
		}
		waitMetric(t, etcdBound, "pharos_proxy_etcd_up after the stop", s.m.EtcdUp, func(v float64) bool { return v == 0 })
		s.logs.waitLog(t, etcdBound, "etcd unreachable")
		routesNow(t, s.r, "etcd down", "n1", "n2")
		if revoked(rt) {
			t.Error("rw route revoked while etcd is down")
		}
		if rt2 := mustAcquire(t, s.r, router.RW); rt2.Backend.Name != "n1" {
			t.Errorf("new rw route to %s while etcd is down, want n1", rt2.Backend.Name)
		}
		wantGauge(t, "pharos_router_rw_available", s.m.RWAvailable, 1)

		ctx, cancel := context.WithTimeout(t.Context(), etcdBound)
		defer cancel()
		if err := ec.StartMember(ctx, 0); err != nil {
			t.Fatalf("StartMember: %v", err)
		}
		waitMetric(t, etcdRecoverBound, "pharos_proxy_etcd_up after the restart", s.m.EtcdUp, func(v float64) bool { return v == 1 })
		s.logs.waitLog(t, etcdBound, "etcd reachable again")
		if n := s.logs.count("etcd unreachable"); n != 1 {
			t.Errorf("one outage logged %d times as unreachable, want once", n)
		}
		routesNow(t, s.r, "etcd back", "n1", "n2")
		if revoked(rt) {
			t.Error("rw route revoked by the re-sync although nothing changed")
		}
	})

	// etcd goes away after the source's read and before its watch is
	// open. The source must notice as it does once the watch runs.
	t.Run("etcd lost between the read and the watch is noticed", func(t *testing.T) {
		t.Parallel()
		ec := startEtcd(t, 1)
		keys := pharosKeys(t, "outage-gap")
		a := newAgent(t, etcdClient(t, ec.Endpoints()...))
		a.member(keys, rec("n1", cluster.RolePrimary, 0))
		a.member(keys, rec("n2", cluster.RoleReplica, 0))
		a.campaign(keys.Leader(), "n1")
		s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{Format: pharosFormat(keys), HoldFirstSnapshot: true})
		s.waitHeld(t)
		if err := ec.StopMember(0); err != nil {
			t.Fatalf("StopMember: %v", err)
		}
		s.release()
		waitRoutes(t, s.r, etcdBound, "first read applied", "n1", "n2")
		// The read succeeded, so the source says up first.
		waitMetric(t, etcdBound, "pharos_proxy_etcd_up after the first read", s.m.EtcdUp, func(v float64) bool { return v == 1 })
		// 25 probe intervals.
		waitMetric(t, 25*etcdProbe, "pharos_proxy_etcd_up with etcd stopped right after the first read", s.m.EtcdUp, func(v float64) bool { return v == 0 })
		if n := s.logs.count("etcd unreachable"); n != 1 {
			t.Errorf("etcd unreachable logged %d times, want once", n)
		}
		routesNow(t, s.r, "etcd down", "n1", "n2")
	})

	t.Run("three members: a flip made while the source's member is down is applied on return", func(t *testing.T) {
		t.Parallel()
		ec := startEtcd(t, 3)
		eps := ec.Endpoints()
		keys := pharosKeys(t, "outage3")
		a := newAgent(t, etcdClient(t, eps[1:]...))
		s := runEtcd(t, etcdClient(t, eps[0]), sourceOptions{Format: pharosFormat(keys)})
		a.member(keys, rec("n1", cluster.RolePrimary, 0))
		a.member(keys, rec("n2", cluster.RoleReplica, 0))
		a.campaign(keys.Leader(), "n1")
		waitRoutes(t, s.r, etcdBound, "start", "n1", "n2")
		waitMetric(t, etcdBound, "pharos_proxy_etcd_up", s.m.EtcdUp, func(v float64) bool { return v == 1 })
		rt := mustAcquire(t, s.r, router.RW)
		s.sync(t, a) // the watch is open: see the next subtest for why that matters

		if err := ec.StopMember(0); err != nil {
			t.Fatalf("StopMember: %v", err)
		}
		waitMetric(t, etcdBound, "pharos_proxy_etcd_up after the stop", s.m.EtcdUp, func(v float64) bool { return v == 0 })

		a.del(keys.Leader())
		a.member(keys, rec("n1", cluster.RoleReplica, 0))
		a.member(keys, rec("n2", cluster.RolePrimary, 0))
		epoch := a.campaign(keys.Leader(), "n2")
		routesNow(t, s.r, "flip written, source cut off", "n1", "n2")
		if revoked(rt) {
			t.Error("rw route revoked although the source cannot have seen the flip")
		}

		ctx, cancel := context.WithTimeout(t.Context(), etcdBound)
		defer cancel()
		if err := ec.StartMember(ctx, 0); err != nil {
			t.Fatalf("StartMember: %v", err)
		}
		waitMetric(t, etcdRecoverBound, "pharos_proxy_etcd_up after the restart", s.m.EtcdUp, func(v float64) bool { return v == 1 })
		waitRoutes(t, s.r, etcdBound, "flip applied", "n2", "n1")
		waitEpoch(t, s, epoch)
		if !revoked(rt) {
			t.Error("rw route to n1 not revoked after the flip reached the source")
		}
	})
}

func TestEtcdCompaction(t *testing.T) {
	t.Parallel()
	t.Run("watch revision compacted before the watch starts", func(t *testing.T) {
		t.Parallel()
		ec := startEtcd(t, 1)
		keys := pharosKeys(t, "compact")
		a := newAgent(t, etcdClient(t, ec.Endpoints()...))
		a.member(keys, rec("n1", cluster.RolePrimary, 0))
		a.member(keys, rec("n2", cluster.RoleReplica, 0))
		a.campaign(keys.Leader(), "n1")

		// The source reads the prefix, then waits in its first snapshot:
		// its watch will start from the revision after that read.
		s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{Format: pharosFormat(keys), HoldFirstSnapshot: true})
		s.waitHeld(t)
		a.del(keys.Leader())
		epoch := a.campaign(keys.Leader(), "n2")
		a.member(keys, rec("n2", cluster.RolePrimary, 0))
		a.member(keys, rec("n1", cluster.RoleReplica, 0))
		a.member(keys, rec("n3", cluster.RoleReplica, 0))
		ctx, cancel := context.WithTimeout(t.Context(), etcdBound)
		defer cancel()
		rev, err := ec.CurrentRevision(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ec.Compact(ctx, rev); err != nil {
			t.Fatal(err)
		}
		s.release()

		waitRoutes(t, s.r, etcdBound, "after compaction", "n2", "n1", "n3")
		waitEpoch(t, s, epoch)
		s.logs.waitLog(t, etcdBound, "watch revision compacted")
		if n := s.logs.count("etcd unreachable"); n != 0 {
			t.Errorf("a compaction was logged as etcd unreachable %d times", n)
		}
		wantGauge(t, "pharos_proxy_etcd_up", s.m.EtcdUp, 1)
	})

	t.Run("compacted while the source's member is down", func(t *testing.T) {
		t.Parallel()
		ec := startEtcd(t, 3)
		eps := ec.Endpoints()
		keys := pharosKeys(t, "compact3")
		a := newAgent(t, etcdClient(t, eps[1:]...))
		s := runEtcd(t, etcdClient(t, eps[0]), sourceOptions{Format: pharosFormat(keys)})
		a.member(keys, rec("n1", cluster.RolePrimary, 0))
		a.member(keys, rec("n2", cluster.RoleReplica, 0))
		a.member(keys, rec("n3", cluster.RoleReplica, 0))
		a.campaign(keys.Leader(), "n1")
		waitRoutes(t, s.r, etcdBound, "start", "n1", "n2", "n3")
		s.sync(t, a)

		if err := ec.StopMember(0); err != nil {
			t.Fatalf("StopMember: %v", err)
		}
		waitMetric(t, etcdBound, "pharos_proxy_etcd_up after the stop", s.m.EtcdUp, func(v float64) bool { return v == 0 })
		a.del(keys.Leader())
		epoch := a.campaign(keys.Leader(), "n3")
		a.member(keys, rec("n3", cluster.RolePrimary, 0))
		a.member(keys, rec("n1", cluster.RoleReplica, 0))
		a.del(keys.Member("n2"))
		ctx, cancel := context.WithTimeout(t.Context(), etcdBound)
		defer cancel()
		rev, err := ec.CurrentRevision(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ec.Compact(ctx, rev); err != nil {
			t.Fatal(err)
		}
		if err := ec.StartMember(ctx, 0); err != nil {
			t.Fatalf("StartMember: %v", err)
		}
		waitMetric(t, etcdRecoverBound, "pharos_proxy_etcd_up after the restart", s.m.EtcdUp, func(v float64) bool { return v == 1 })
		waitRoutes(t, s.r, etcdBound, "re-synced", "n3", "n1")
		waitEpoch(t, s, epoch)
	})
}

func TestEtcdTwoSourcesAgree(t *testing.T) {
	t.Parallel()
	ec := startEtcd(t, 1)
	keys := pharosKeys(t, "two")
	a := newAgent(t, etcdClient(t, ec.Endpoints()...))
	opts := sourceOptions{Router: router.Config{MaxLagBytes: maxLag}, Format: pharosFormat(keys)}
	s1 := runEtcd(t, etcdClient(t, ec.Endpoints()...), opts)
	s2 := runEtcd(t, etcdClient(t, ec.Endpoints()...), opts)

	// A series of changes written back to back, so the two watches may
	// batch them differently.
	a.member(keys, rec("n1", cluster.RolePrimary, 0))
	a.member(keys, rec("n2", cluster.RoleReplica, 0))
	a.member(keys, rec("n3", cluster.RoleReplica, 0))
	a.campaign(keys.Leader(), "n1")
	a.member(keys, rec("n3", cluster.RoleReplica, maxLag*2))
	a.flip(keys.Leader(), "n2")
	a.member(keys, rec("n2", cluster.RolePrimary, 0))
	a.member(keys, rec("n1", cluster.RoleReplica, 0))
	a.member(keys, rec("n3", cluster.RoleReplica, 0))
	nolb := rec("n1", cluster.RoleReplica, 0)
	nolb.Tags.NoLoadBalance = true
	a.member(keys, nolb)
	a.del(keys.Leader())
	a.member(keys, rec("n4", cluster.RoleReplica, 5))
	a.member(keys, rec("n3", cluster.RolePrimary, 0))
	a.member(keys, rec("n2", cluster.RoleReplica, 0))
	epoch := a.campaign(keys.Leader(), "n3")
	a.del(keys.Member("n4"))

	for i, s := range []*etcdRun{s1, s2} {
		t.Run(fmt.Sprintf("source %d", i+1), func(t *testing.T) {
			s.sync(t, a)
			routesNow(t, s.r, "after the series", "n3", "n2")
			waitEpoch(t, s, epoch)
		})
	}
	t.Run("same view", func(t *testing.T) {
		rw1, ro1 := s1.r.Current()
		rw2, ro2 := s2.r.Current()
		if rw1 != rw2 || !slices.Equal(sorted(ro1), sorted(ro2)) {
			t.Errorf("source 1 routes rw %q ro %v, source 2 rw %q ro %v", rw1, ro1, rw2, ro2)
		}
		if b1, b2 := backendSeries(t, s1.reg, "pharos_backend_up"), backendSeries(t, s2.reg, "pharos_backend_up"); !slices.Equal(b1, b2) {
			t.Errorf("backends: source 1 %v, source 2 %v", b1, b2)
		}
	})
}

func TestEtcdMalformedKeysIgnored(t *testing.T) {
	t.Parallel()
	ec := startEtcd(t, 1)
	keys := pharosKeys(t, "bad")
	a := newAgent(t, etcdClient(t, ec.Endpoints()...))
	s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{Format: pharosFormat(keys)})
	a.member(keys, rec("n1", cluster.RolePrimary, 0))
	a.member(keys, rec("n2", cluster.RoleReplica, 0))
	epoch := a.campaign(keys.Leader(), "n1")
	waitRoutes(t, s.r, etcdBound, "start", "n1", "n2")

	record := func(name string, role cluster.Role) string {
		b, err := json.Marshal(rec(name, role, 0))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	bad := map[string]string{
		keys.Member("x"):                  `{"name": "x", "role": "replica", "host": `, // garbage JSON
		keys.Member("y"):                  record("z", cluster.RoleReplica),            // names another member
		keys.Member("w"):                  strings.Replace(record("w", cluster.RoleReplica), `"replica"`, `"leader"`, 1),
		keys.Member("v"):                  `null`,
		keys.Member("u"):                  strings.Replace(record("u", cluster.RoleReplica), `"port":`+strconv.Itoa(portOf("u")), `"port":0`, 1),
		keys.Member("bad!name"):           record("bad!name", cluster.RoleReplica),
		keys.Member("a/b"):                record("b", cluster.RoleReplica), // below the layout
		keys.Member(""):                   record("empty", cluster.RoleReplica),
		keys.Prefix() + "foo":             record("foo", cluster.RoleReplica), // outside the layout
		keys.Prefix() + "members":         record("members", cluster.RoleReplica),
		"/pharos/bad-neighbour/members/q": record("q", cluster.RoleReplica),
	}
	for k, v := range bad {
		a.put(k, v)
	}
	s.sync(t, a)
	// More snapshots, each with every bad key in it.
	a.member(keys, rec("n2", cluster.RoleReplica, 1))
	s.sync(t, a)

	t.Run("valid members still routed, nothing routed to the bad ones", func(t *testing.T) {
		routesNow(t, s.r, "with bad keys", "n1", "n2")
		if got := backendSeries(t, s.reg, "pharos_backend_up"); !slices.Equal(got, []string{"n1", "n2"}) {
			t.Errorf("backends known to the router: %v, want [n1 n2]", got)
		}
		for range 3 {
			if rt := mustAcquire(t, s.r, router.RO); rt.Backend.Name != "n2" {
				t.Errorf("ro route to %s", rt.Backend.Name)
			}
		}
		waitEpoch(t, s, epoch)
		if !s.running() {
			t.Fatal("source stopped")
		}
	})
	t.Run("each bad member record logged once", func(t *testing.T) {
		// ("bad!name" and "a/b" are not member keys of the layout at all.)
		for _, name := range []string{"x", "y", "w", "v", "u"} {
			if n := s.logs.count("ignoring etcd key", "key", keys.Member(name)); n != 1 {
				t.Errorf("%s logged %d times, want once", keys.Member(name), n)
			}
		}
	})
	t.Run("leader key not holding a name", func(t *testing.T) {
		a.del(keys.Leader())
		a.put(keys.Leader(), "not a name!")
		s.sync(t, a)
		routesNow(t, s.r, `leader "not a name!"`, "", "n2")
		waitEpoch(t, s, 0)
	})
	for _, name := range []string{"x", "z", "b", "foo"} {
		t.Run("leader naming "+name+", which has no valid record", func(t *testing.T) {
			a.flip(keys.Leader(), name)
			s.sync(t, a)
			routesNow(t, s.r, "leader "+name, "", "n2")
			wantNoRoute(t, s.r, router.RW)
		})
	}
	t.Run("the leader's own record turning to garbage drops rw", func(t *testing.T) {
		a.flip(keys.Leader(), "n1")
		waitRoutes(t, s.r, etcdBound, "leader n1 again", "n1", "n2")
		a.put(keys.Member("n1"), `{"name":"n1","role":"primary"`)
		waitRoutes(t, s.r, etcdBound, "n1 record garbage", "", "n2")
		a.member(keys, rec("n1", cluster.RolePrimary, 0))
		waitRoutes(t, s.r, etcdBound, "n1 record restored", "n1", "n2")
	})
}

// patroniFixture reads a member record from the cluster package's Patroni
// fixtures with its conn_url pointed at 127.0.0.1:port.
func patroniFixture(t *testing.T, file string, port int) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "internal", "cluster", "testdata", "patroni", file))
	if err != nil {
		t.Fatal(err)
	}
	return patroniWith(t, string(data), map[string]any{"conn_url": fmt.Sprintf("postgres://127.0.0.1:%d/postgres", port)})
}

// patroniWith returns a Patroni JSON record with fields replaced; numbers
// are kept as Patroni wrote them.
func patroniWith(t *testing.T, record string, fields map[string]any) string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(record), &m); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	for k, v := range fields {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		m[k] = b
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestEtcdPatroniFormat(t *testing.T) {
	t.Parallel()
	ec := startEtcd(t, 1)
	keys, err := cluster.NewPatroniKeys("/service", "batman")
	if err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, etcdClient(t, ec.Endpoints()...))
	s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{
		Router: router.Config{MaxLagBytes: maxLag},
		Format: func(log *slog.Logger) router.Format { return router.NewPatroniFormat(keys, log) },
	})
	port := map[string]int{"node1": 25431, "node2": 25432, "node3": 25433}

	// primary_v4 and status_v4 both say 134217888.
	const optime = 134217888
	a.put(keys.Member("node1"), patroniFixture(t, "primary_v4.json", port["node1"]))
	replica := patroniWith(t, patroniFixture(t, "replica_v3.json", port["node2"]), map[string]any{"xlog_location": optime - 888})
	a.put(keys.Member("node2"), replica)
	a.put(keys.Member("node3"), patroniFixture(t, "replica_streaming_tags.json", port["node3"])) // noloadbalance
	a.put(keys.Status(), fixtureText(t, "status_v4.json"))
	epoch1 := a.campaign(keys.Leader(), "node1")

	t.Run("leader primary, replicas by lag and tags", func(t *testing.T) {
		waitRoutes(t, s.r, etcdBound, "start", "node1", "node2")
		waitEpoch(t, s, epoch1)
		rt := mustAcquire(t, s.r, router.RW)
		if want := "127.0.0.1:" + strconv.Itoa(port["node1"]); rt.Backend.Addr != want {
			t.Errorf("rw route to %s, want %s", rt.Backend.Addr, want)
		}
		wantGauge(t, "pharos_backend_lag_bytes{node2}", s.m.BackendLag.WithLabelValues("node2"), 888)
		// replica_streaming_tags: replay_lsn 134216000.
		wantGauge(t, "pharos_backend_lag_bytes{node3}", s.m.BackendLag.WithLabelValues("node3"), optime-134216000)
	})
	t.Run("replica lag follows the status key's optime", func(t *testing.T) {
		a.put(keys.Status(), fmt.Sprintf(`{"optime":%d,"slots":{"node2":%d}}`, optime+2*maxLag, optime))
		waitRoutes(t, s.r, etcdBound, "leader moved ahead", "node1")
		wantGauge(t, "pharos_backend_lag_bytes{node2}", s.m.BackendLag.WithLabelValues("node2"), 2*maxLag+888)
	})
	t.Run("replica xlog_location catching up", func(t *testing.T) {
		a.put(keys.Member("node2"), patroniWith(t, replica, map[string]any{"xlog_location": optime + 2*maxLag}))
		waitRoutes(t, s.r, etcdBound, "node2 caught up", "node1", "node2")
	})
	t.Run("legacy optime/leader key is read when status is absent", func(t *testing.T) {
		a.del(keys.Status())
		a.put(keys.LegacyOptime(), strconv.Itoa(optime+4*maxLag))
		waitRoutes(t, s.r, etcdBound, "legacy optime ahead", "node1")
		a.put(keys.Status(), fmt.Sprintf(`{"optime":%d}`, optime+2*maxLag))
		waitRoutes(t, s.r, etcdBound, "status preferred", "node1", "node2")
	})

	var epoch2 int64
	t.Run("promoted leader gets no rw", func(t *testing.T) {
		a.del(keys.Leader())
		a.put(keys.Member("node2"), patroniFixture(t, "promoted_v4.json", port["node2"]))
		epoch2 = a.campaign(keys.Leader(), "node2")
		s.sync(t, a)
		routesNow(t, s.r, "node2 promoted", "")
		wantNoRoute(t, s.r, router.RW)
		waitEpoch(t, s, epoch2)
	})
	t.Run("primary but not yet running gets no rw", func(t *testing.T) {
		a.put(keys.Member("node2"), patroniWith(t, patroniFixture(t, "primary_v4.json", port["node2"]), map[string]any{"state": "starting"}))
		s.sync(t, a)
		routesNow(t, s.r, "node2 primary starting", "")
	})
	t.Run("rw once the record says primary and running", func(t *testing.T) {
		a.put(keys.Member("node2"), patroniFixture(t, "primary_v4.json", port["node2"]))
		a.put(keys.Member("node1"), patroniWith(t, patroniFixture(t, "replica_v3.json", port["node1"]), map[string]any{"xlog_location": optime + 2*maxLag}))
		waitRoutes(t, s.r, etcdBound, "node2 primary", "node2", "node1")
		rt := mustAcquire(t, s.r, router.RW)
		if want := "127.0.0.1:" + strconv.Itoa(port["node2"]); rt.Backend.Addr != want {
			t.Errorf("rw route to %s, want %s", rt.Backend.Addr, want)
		}
	})
	t.Run("master (Patroni before 4.0) is a primary", func(t *testing.T) {
		a.del(keys.Leader())
		a.put(keys.Member("node2"), patroniWith(t, patroniFixture(t, "replica_v3.json", port["node2"]), map[string]any{"xlog_location": optime + 2*maxLag}))
		a.put(keys.Member("node1"), patroniFixture(t, "primary_v3_master.json", port["node1"]))
		a.campaign(keys.Leader(), "node1")
		waitRoutes(t, s.r, etcdBound, "node1 master", "node1", "node2")
	})
	t.Run("standby_leader holding the leader key is never rw", func(t *testing.T) {
		a.del(keys.Leader())
		a.put(keys.Member("node3"), patroniWith(t, patroniFixture(t, "standby_leader.json", port["node3"]),
			map[string]any{"xlog_location": optime + 2*maxLag, "replay_lsn": optime + 2*maxLag, "receive_lsn": optime + 2*maxLag}))
		a.campaign(keys.Leader(), "node3")
		s.sync(t, a)
		routesNow(t, s.r, "node3 standby_leader", "", "node2", "node3")
	})
}

func fixtureText(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "internal", "cluster", "testdata", "patroni", file))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// forward relays TCP connections from listenAddr to target until the test
// ends: a stand-in for an etcd that appears at an address late.
func forward(t *testing.T, listenAddr, target string) {
	t.Helper()
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		t.Fatalf("listen %s: %v", listenAddr, err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Go(func() {
				defer c.Close()
				u, err := net.DialTimeout("tcp", target, 2*time.Second)
				if err != nil {
					return
				}
				track(u)
				defer u.Close()
				done := make(chan struct{})
				go func() { _, _ = io.Copy(u, c); u.Close(); close(done) }()
				_, _ = io.Copy(c, u)
				c.Close()
				<-done
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

func TestEtcdUnreachableAtStart(t *testing.T) {
	t.Parallel()
	t.Run("stops cleanly while unreachable", func(t *testing.T) {
		t.Parallel()
		keys := pharosKeys(t, "nowhere")
		s := runEtcd(t, etcdClient(t, "http://"+freeAddr(t)), sourceOptions{Format: pharosFormat(keys)})
		s.logs.waitLog(t, etcdBound, "etcd unreachable")
		wantGauge(t, "pharos_proxy_etcd_up", s.m.EtcdUp, 0)
		s.stop(t)
		if s.running() {
			t.Error("Run still running after stop")
		}
	})

	t.Run("retries until etcd answers", func(t *testing.T) {
		t.Parallel()
		addr := freeAddr(t)
		keys := pharosKeys(t, "late")
		s := runEtcd(t, etcdClient(t, "http://"+addr), sourceOptions{Format: pharosFormat(keys)})
		s.logs.waitLog(t, etcdBound, "etcd unreachable")
		wantGauge(t, "pharos_proxy_etcd_up", s.m.EtcdUp, 0)
		routesNow(t, s.r, "etcd unreachable", "")
		wantNoRoute(t, s.r, router.RW)
		ctx, cancel := context.WithTimeout(t.Context(), 3*etcdProbe)
		_, err := s.r.Acquire(ctx, router.RW)
		cancel()
		if !errors.Is(err, router.ErrNoRoute) {
			t.Errorf("rw Acquire with etcd unreachable: %v, want ErrNoRoute", err)
		}

		// etcd appears at the address: the source must find it on its own.
		ec := startEtcd(t, 1)
		a := newAgent(t, etcdClient(t, ec.Endpoints()...))
		a.member(keys, rec("n1", cluster.RolePrimary, 0))
		a.member(keys, rec("n2", cluster.RoleReplica, 0))
		a.campaign(keys.Leader(), "n1")
		if !s.running() {
			t.Fatal("Run returned while etcd was unreachable")
		}
		forward(t, addr, hostPort(ec.Endpoints()[0]))
		waitMetric(t, etcdRecoverBound, "pharos_proxy_etcd_up once etcd answers", s.m.EtcdUp, func(v float64) bool { return v == 1 })
		waitRoutes(t, s.r, etcdBound, "etcd found", "n1", "n2")
		if n := s.logs.count("etcd unreachable"); n != 1 {
			t.Errorf("unreachable logged %d times, want once", n)
		}
	})
}
