package proxy_test

// Routing driven by etcd, end to end: a proxy whose router follows member
// records and the leader key in embedded etcd, in front of the shared
// cluster's two real servers. Routing trusts etcd alone, so naming the
// replica as leader is enough to show where rw sessions go.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/bench"
	pharoscluster "github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdclient"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// etcdWait bounds every wait for an etcd change to reach the router.
const etcdWait = 10 * time.Second

// startEtcdProxy is startProxy with an etcd source (pharos format, keys)
// instead of the static one. It does not wait for a topology: the test
// writes it.
func startEtcdProxy(t *testing.T, ec *etcdlocal.Cluster, keys pharoscluster.Keys, cfg proxy.Config) *testProxy {
	t.Helper()
	cfg.RWListen, cfg.ROListen = "127.0.0.1:0", "127.0.0.1:0"
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 2 * time.Second
	}
	if cfg.RouteWait == 0 {
		cfg.RouteWait = time.Second
	}
	log := testLogger(t)
	reg := prometheus.NewRegistry()
	m := metrics.NewProxy(reg)
	m.RegisterEtcd(reg)
	r := router.New(router.Config{}, log, m)
	client, err := etcdclient.New(etcdclient.Config{Endpoints: ec.Endpoints()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() }) // after the proxy's cleanup below
	src := router.NewEtcd(client, router.NewPharosFormat(keys, log), 200*time.Millisecond, log, m)
	srv, err := proxy.New(cfg, r, log, m)
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	srcCtx, stopSrc := context.WithCancel(context.Background())
	tp := &testProxy{Server: srv, Router: r, Metrics: m, Reg: reg, stop: stop, done: make(chan error, 1)}
	srcDone := make(chan error, 1)
	go func() { srcDone <- src.Run(srcCtx, r) }()
	go func() {
		err := srv.Serve(ctx)
		stopSrc()
		if serr := <-srcDone; serr != nil && err == nil {
			err = fmt.Errorf("etcd source: %w", serr)
		}
		tp.done <- err
	}()
	t.Cleanup(func() { tp.Stop(t) })
	return tp
}

// etcdAgent writes keys as a pharos agent would.
type etcdAgent struct {
	t    *testing.T
	cli  *clientv3.Client
	keys pharoscluster.Keys
}

func (a etcdAgent) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

func (a etcdAgent) member(in *pglocal.Instance, role pharoscluster.Role) {
	a.t.Helper()
	lag := int64(0)
	rec, err := pharoscluster.MarshalMember(pharoscluster.Member{Name: in.Name, Role: role, Host: "127.0.0.1", Port: in.Port, LagBytes: &lag})
	if err != nil {
		a.t.Fatal(err)
	}
	ctx, cancel := a.ctx()
	defer cancel()
	// The proxy routes only to records on a lease, as agents write them.
	lease, err := a.cli.Grant(ctx, 600)
	if err != nil {
		a.t.Fatalf("grant: %v", err)
	}
	if _, err := a.cli.Put(ctx, a.keys.Member(in.Name), string(rec), clientv3.WithLease(lease.ID)); err != nil {
		a.t.Fatalf("put member %s: %v", in.Name, err)
	}
}

func (a etcdAgent) resign() {
	a.t.Helper()
	ctx, cancel := a.ctx()
	defer cancel()
	if _, err := a.cli.Delete(ctx, a.keys.Leader()); err != nil {
		a.t.Fatalf("delete leader: %v", err)
	}
}

// campaign takes the free leader key for name and returns the epoch.
func (a etcdAgent) campaign(name string) int64 {
	a.t.Helper()
	ctx, cancel := a.ctx()
	defer cancel()
	lease, err := a.cli.Grant(ctx, 600)
	if err != nil {
		a.t.Fatalf("grant: %v", err)
	}
	resp, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(a.keys.Leader()), "=", 0)).
		Then(clientv3.OpPut(a.keys.Leader(), name, clientv3.WithLease(lease.ID))).
		Commit()
	if err != nil {
		a.t.Fatalf("campaign %s: %v", name, err)
	}
	if !resp.Succeeded {
		a.t.Fatalf("campaign %s: leader key taken", name)
	}
	return resp.Header.Revision
}

// waitRouter waits until the router's rw target is wantRW ("" for none)
// and, when wantRO is given, its ro set is exactly wantRO.
func waitRouter(t *testing.T, r *router.Router, wantRW string, wantRO ...string) {
	t.Helper()
	timer := time.NewTimer(etcdWait)
	defer timer.Stop()
	for {
		ch := r.Changed()
		rw, ro := r.Current()
		if rw == wantRW && (wantRO == nil || fmt.Sprint(ro) == fmt.Sprint(wantRO)) {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("after %v rw = %q, ro = %v; want rw = %q, ro = %v", etcdWait, rw, ro, wantRW, wantRO)
		}
	}
}

func serverPort(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rbWait)
	defer cancel()
	var port int
	if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		t.Fatalf("inet_server_port(): %v", err)
	}
	return port
}

func TestEtcdRoutingThroughProxy(t *testing.T) {
	const routeWait = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ec, err := etcdlocal.Start(ctx, etcdlocal.Options{})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := ec.Close(); err != nil {
			t.Errorf("close etcd: %v", err)
		}
	})
	writer, err := ec.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = writer.Close() })
	keys, err := pharoscluster.NewKeys("through-proxy")
	if err != nil {
		t.Fatal(err)
	}
	a := etcdAgent{t: t, cli: writer, keys: keys}
	primary, replica := cluster.Primary(), cluster.Replicas()[0]

	p := startEtcdProxy(t, ec, keys, proxy.Config{RouteWait: routeWait})
	a.member(primary, pharoscluster.RolePrimary)
	a.member(replica, pharoscluster.RoleReplica)
	a.campaign(primary.Name)
	waitRouter(t, p.Router, primary.Name, replica.Name)

	// Opened here so that it outlives the subtest that checks it.
	onOld := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	t.Run("rw lands on the leader, ro on the replica", func(t *testing.T) {
		if got := serverPort(t, onOld); got != primary.Port {
			t.Errorf("rw session on port %d, want the leader's %d", got, primary.Port)
		}
		ro := p.connect(t, router.RO, pglocal.UserSCRAM, "")
		if got := serverPort(t, ro); got != replica.Port {
			t.Errorf("ro session on port %d, want the replica's %d", got, replica.Port)
		}
	})

	t.Run("leader flip moves rw and fences the old session", func(t *testing.T) {
		// The ro session above is on the replica about to be promoted,
		// which would fence it too: it must be gone from the proxy first.
		rbWaitGauge(t, p.Metrics.Clients.WithLabelValues(router.RO.String()), 0)
		fencedBefore := counter(p.Metrics.Terminated, string(metrics.ReasonFenced))
		a.resign()
		a.member(replica, pharoscluster.RolePrimary)
		a.member(primary, pharoscluster.RoleReplica)
		epoch := a.campaign(replica.Name)
		waitRouter(t, p.Router, replica.Name)

		conn := p.connect(t, router.RW, pglocal.UserSCRAM, "")
		if got := serverPort(t, conn); got != replica.Port {
			t.Errorf("new rw session on port %d, want the new leader's %d", got, replica.Port)
		}
		qctx, qcancel := context.WithTimeout(context.Background(), rbWait)
		defer qcancel()
		_, err := onOld.Exec(qctx, "SELECT 1")
		if err == nil {
			t.Error("query on the old leader's session succeeded after the flip")
		} else {
			rbCheckPgError(t, err, wire.CodeAdminShutdown, "no longer a valid target")
		}
		waitCounter(t, p.Metrics.Terminated, []string{string(metrics.ReasonFenced)}, fencedBefore+1)
		if got := counter(p.Metrics.Terminated, string(metrics.ReasonFenced)); got != fencedBefore+1 {
			t.Errorf("sessions_terminated_total{reason=fenced} moved by %v, want 1", got-fencedBefore)
		}
		waitGaugeValue(t, p.Metrics.LeaderEpoch, float64(epoch))
	})

	t.Run("no leader: rw waits RouteWait then gets 57P03", func(t *testing.T) {
		a.resign()
		waitRouter(t, p.Router, "")
		noBackend := counter(p.Metrics.Sessions, router.RW.String(), string(metrics.OutcomeNoBackend))
		cctx, ccancel := context.WithTimeout(context.Background(), routeWait+rbWait)
		defer ccancel()
		start := time.Now()
		conn, err := pgx.Connect(cctx, p.DSN(router.RW, pglocal.UserSCRAM, ""))
		waited := time.Since(start)
		if err == nil {
			_ = conn.Close(cctx)
			t.Fatal("rw session attached with no leader")
		}
		rbCheckPgError(t, err, wire.CodeCannotConnectNow, "no primary is available")
		if waited < routeWait {
			t.Errorf("refused after %v, before RouteWait %v", waited, routeWait)
		}
		if d := counter(p.Metrics.Sessions, router.RW.String(), string(metrics.OutcomeNoBackend)) - noBackend; d != 1 {
			t.Errorf("outcome no_backend moved by %v, want 1", d)
		}
	})

	t.Run("bench.RunSwitch flips between the two servers", func(t *testing.T) {
		var members []bench.SwitchMember
		for _, in := range []*pglocal.Instance{primary, replica} {
			members = append(members, bench.SwitchMember{Name: in.Name, Host: "127.0.0.1", Port: in.Port})
		}
		sctx, scancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer scancel()
		res, err := bench.RunSwitch(sctx, bench.SwitchConfig{
			Etcd:    writer,
			Keys:    keys,
			RWDSN:   p.DSN(router.RW, pglocal.UserTrust, ""),
			Members: members,
			Flips:   5,
			Timeout: etcdWait,
		})
		if err != nil {
			t.Fatalf("RunSwitch: %v", err)
		}
		if len(res.Latencies) != 5 {
			t.Errorf("RunSwitch returned %d latencies, want 5", len(res.Latencies))
		}
		t.Logf("switch latencies %v, %d sessions", res.Latencies, res.Attempts)
	})
}

// waitCounter waits (bounded) until the counter with labels reaches want.
func waitCounter(t *testing.T, c *prometheus.CounterVec, labels []string, want float64) {
	t.Helper()
	deadline := time.Now().Add(rbWait)
	for counter(c, labels...) < want {
		if time.Now().After(deadline) {
			t.Fatalf("counter %v still %v after %v, want %v", labels, counter(c, labels...), rbWait, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGaugeValue waits (bounded) until g equals want.
func waitGaugeValue(t *testing.T, g prometheus.Gauge, want float64) {
	t.Helper()
	deadline := time.Now().Add(rbWait)
	for {
		got := testutil.ToFloat64(g)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gauge %v after %v, want %v", got, rbWait, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
