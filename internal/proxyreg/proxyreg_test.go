package proxyreg_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/proxyreg"
	"github.com/pharos-ha/pharos/metrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// logBuf collects log lines; safe for concurrent use.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
	t  *testing.T
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLog(t *testing.T) (*slog.Logger, *logBuf) {
	lb := &logBuf{t: t}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

func testKeys(t *testing.T) cluster.Keys {
	k, err := cluster.NewKeys("main")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fakeProxy stands for the proxy's cancel ID.
type fakeProxy struct {
	id  atomic.Uint32
	set atomic.Int32 // SetCancelID calls
}

func (f *fakeProxy) CancelID() uint16 { return uint16(f.id.Load()) }
func (f *fakeProxy) SetCancelID(id uint16) error {
	f.id.Store(uint32(id))
	f.set.Add(1)
	return nil
}

type running struct {
	reg     *proxyreg.Registrar
	fp      *fakeProxy
	m       *metrics.Proxy
	log     *logBuf
	stop    context.CancelFunc
	stopped chan struct{}
}

func record(name, rw string) cluster.Proxy {
	return cluster.Proxy{Name: name, Version: "test", Listeners: cluster.ProxyListeners{RW: rw},
		StartedAt: time.Now().UTC().Truncate(time.Second)}
}

// start runs a Registrar for rec until the test ends (or Stop).
func start(t *testing.T, cli *clientv3.Client, rec cluster.Proxy, initialID uint16) *running {
	t.Helper()
	log, lb := newLog(t)
	fp := &fakeProxy{}
	fp.id.Store(uint32(initialID))
	m := metrics.NewProxy(prometheus.NewRegistry())
	reg, err := proxyreg.NewRegistrar(proxyreg.Config{
		Client: cli, Keys: testKeys(t), Record: rec, TTL: 2 * time.Second, OpTimeout: time.Second,
		CancelID: fp.CancelID, SetCancelID: fp.SetCancelID, Log: log, Metrics: m,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{reg: reg, fp: fp, m: m, log: lb, stop: cancel, stopped: make(chan struct{})}
	go func() {
		defer close(r.stopped)
		_ = reg.Run(ctx)
	}()
	t.Cleanup(r.Stop)
	return r
}

func (r *running) Stop() {
	r.stop()
	<-r.stopped
}

// eventually polls cond every 20 ms for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get reads a key: value, lease, found.
func get(t *testing.T, cli *clientv3.Client, key string) (string, int64, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, false
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].Lease, true
}

func readRecord(t *testing.T, cli *clientv3.Client, name string) (cluster.Proxy, int64, bool) {
	t.Helper()
	v, lease, ok := get(t, cli, testKeys(t).Proxy(name))
	if !ok {
		return cluster.Proxy{}, 0, false
	}
	p, err := cluster.ParseProxy([]byte(v))
	if err != nil {
		t.Fatalf("the registrar wrote a record that does not parse: %v", err)
	}
	return p, lease, true
}

// TestRegisterClaimsUniqueIDs: proxies take the lowest free cancel IDs
// (one held by a stranger is skipped), record and claim on one lease; the
// proxy is told its ID; a clean stop deletes both keys.
func TestRegisterClaimsUniqueIDs(t *testing.T) {
	_, cli := etcdlocal.StartForTest(t)
	k := testKeys(t)
	// ID 1 is held by a live proxy that is not ours.
	lease, err := cli.Grant(t.Context(), 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(t.Context(), k.CancelID(1), "stranger", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	a := start(t, cli, record("pxa:6432", "127.0.0.1:16432"), 300)
	<-a.reg.Ready()
	b := start(t, cli, record("pxb:6432", "127.0.0.1:26432"), 300)
	<-b.reg.Ready()
	for _, tc := range []struct {
		r    *running
		name string
		want uint16
	}{{a, "pxa:6432", 2}, {b, "pxb:6432", 3}} {
		p, plEase, ok := readRecord(t, cli, tc.name)
		if !ok || p.CancelID != tc.want || plEase == 0 {
			t.Fatalf("%s: record %+v on lease %x (found %v), want cancel_id %d on a lease", tc.name, p, plEase, ok, tc.want)
		}
		holder, cl, ok := get(t, cli, k.CancelID(tc.want))
		if !ok || holder != tc.name || cl != plEase {
			t.Fatalf("claim of %d: %q on lease %x, want %q on the record's lease %x", tc.want, holder, cl, tc.name, plEase)
		}
		if tc.r.fp.CancelID() != tc.want || !tc.r.reg.Registered() || testutil.ToFloat64(tc.r.m.Registered) != 1 ||
			testutil.ToFloat64(tc.r.m.CancelID) != float64(tc.want) {
			t.Fatalf("%s: proxy told %d, registered %v", tc.name, tc.r.fp.CancelID(), tc.r.reg.Registered())
		}
	}
	a.Stop()
	if _, _, ok := get(t, cli, k.Proxy("pxa:6432")); ok {
		t.Fatal("record still there after a clean stop")
	}
	if _, _, ok := get(t, cli, k.CancelID(2)); ok {
		t.Fatal("claim still there after a clean stop")
	}
	if !strings.Contains(a.log.String(), "proxy unregistered") {
		t.Fatal("no log line for the unregistration")
	}
}

// TestReRegisterKeepsID: after its lease is revoked behind its back, and
// after its record is deleted, the proxy registers again and keeps its ID.
func TestReRegisterKeepsID(t *testing.T) {
	_, cli := etcdlocal.StartForTest(t)
	k := testKeys(t)
	stranger, err := cli.Grant(t.Context(), 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(t.Context(), k.CancelID(1), "stranger", clientv3.WithLease(stranger.ID)); err != nil {
		t.Fatal(err)
	}
	a := start(t, cli, record("pxa", "127.0.0.1:16432"), 0)
	<-a.reg.Ready()
	p, lease, ok := readRecord(t, cli, "pxa")
	if !ok || p.CancelID != 2 {
		t.Fatalf("record %+v, %v", p, ok)
	}
	// ID 1 is free again, but the proxy's keys carry 2: it keeps 2.
	if _, err := cli.Revoke(t.Context(), stranger.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(t.Context(), clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "registered again on a new lease", func() bool {
		p, l, ok := readRecord(t, cli, "pxa")
		return ok && l != lease && p.CancelID == 2
	})
	if _, err := cli.Delete(t.Context(), k.Proxy("pxa")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "registered again after the record was deleted", func() bool {
		p, _, ok := readRecord(t, cli, "pxa")
		return ok && p.CancelID == 2
	})
	if holder, _, ok := get(t, cli, k.CancelID(2)); !ok || holder != "pxa" {
		t.Fatalf("claim of 2: %q, %v", holder, ok)
	}
	if a.fp.set.Load() != 1 {
		t.Fatalf("SetCancelID called %d times, want once (the first registration)", a.fp.set.Load())
	}
}

// TestReRegisterMovesOffATakenID: when the proxy's ID was taken while it
// was away, it claims another and tells the proxy.
func TestReRegisterMovesOffATakenID(t *testing.T) {
	_, cli := etcdlocal.StartForTest(t)
	k := testKeys(t)
	a := start(t, cli, record("pxa", "127.0.0.1:16432"), 0)
	<-a.reg.Ready()
	_, lease, _ := readRecord(t, cli, "pxa")
	// Revoke and take the ID in one go, as another proxy would in the gap.
	other, err := cli.Grant(t.Context(), 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(t.Context(), clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(t.Context(), k.CancelID(1), "pxb", clientv3.WithLease(other.ID)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "registered with another ID", func() bool {
		p, _, ok := readRecord(t, cli, "pxa")
		return ok && p.CancelID == 2 && a.fp.CancelID() == 2
	})
}

// TestEtcdUnreachableAtStart: with etcd down the registrar says so (Ready
// closes, not registered, an error logged and the gauge 0) and registers
// once etcd is back.
func TestEtcdUnreachableAtStart(t *testing.T) {
	ec, cli := etcdlocal.StartForTest(t)
	if err := ec.StopMember(0); err != nil {
		t.Fatal(err)
	}
	a := start(t, cli, record("pxa", "127.0.0.1:16432"), 0)
	select {
	case <-a.reg.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("Ready not closed while etcd is down")
	}
	if a.reg.Registered() || testutil.ToFloat64(a.m.Registered) != 0 {
		t.Fatal("registered while etcd is down")
	}
	eventually(t, 5*time.Second, "an error logged", func() bool {
		return strings.Contains(a.log.String(), "proxy not registered in etcd, retrying")
	})
	if err := ec.StartMember(t.Context(), 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "registered once etcd is back", func() bool {
		_, _, ok := readRecord(t, cli, "pxa")
		return ok && a.reg.Registered() && testutil.ToFloat64(a.m.Registered) == 1
	})
}

// TestDirectory: the directory lists the other live proxies and maps
// their cancel IDs to a client listener; it ignores, with a log line, a
// half-written record, garbage, a record on no lease and one naming
// another proxy, and never lists its own proxy.
func TestDirectory(t *testing.T) {
	_, cli := etcdlocal.StartForTest(t)
	k := testKeys(t)
	log, lb := newLog(t)
	d := proxyreg.NewDirectory(cli, k, "pxa", log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	defer func() { cancel(); <-done }()

	lease, err := cli.Grant(t.Context(), 60)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key, v string, leased bool) {
		t.Helper()
		var opts []clientv3.OpOption
		if leased {
			opts = append(opts, clientv3.WithLease(lease.ID))
		}
		if _, err := cli.Put(t.Context(), key, v, opts...); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(name string, id uint16, rw, ro string) string {
		p := record(name, rw)
		p.Listeners.RO = ro
		p.CancelID = id
		b, err := cluster.MarshalProxy(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// Before Run's first read, and after it.
	put(k.Proxy("pxb"), mk("pxb", 2, "127.0.0.1:2", "127.0.0.1:3"), true)
	put(k.Proxy("pxa"), mk("pxa", 1, "127.0.0.1:1", ""), true)
	eventually(t, 5*time.Second, "pxb listed", func() bool { _, ok := d.CancelAddr(2); return ok })
	put(k.Proxy("pxc"), mk("pxc", 3, "", "127.0.0.1:4"), true)
	put(k.Proxy("half"), `{"name":"half","listeners":{"rw":"127.0.0.1:5`, true)
	put(k.Proxy("junk"), "\x00\xff garbage", true)
	put(k.Proxy("forged"), mk("forged", 5, "127.0.0.1:6", ""), false)
	put(k.Proxy("liar"), mk("pxz", 6, "127.0.0.1:7", ""), true)
	eventually(t, 5*time.Second, "pxc listed", func() bool { _, ok := d.CancelAddr(3); return ok })
	eventually(t, 5*time.Second, "every bad record logged", func() bool {
		s := lb.String()
		return strings.Count(s, "ignoring a proxy record") == 4
	})
	for _, tc := range []struct {
		id   uint16
		addr string
		ok   bool
	}{{1, "", false}, {2, "127.0.0.1:2", true}, {3, "127.0.0.1:4", true}, {5, "", false}, {6, "", false}, {7, "", false}} {
		if addr, ok := d.CancelAddr(tc.id); addr != tc.addr || ok != tc.ok {
			t.Errorf("CancelAddr(%d) = %q, %v; want %q, %v", tc.id, addr, ok, tc.addr, tc.ok)
		}
	}
	var names []string
	for _, p := range d.Proxies() {
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "pxb,pxc" {
		t.Errorf("proxies %v, want pxb,pxc", names)
	}
	// Two records with one ID: neither gets the cancel requests.
	put(k.Proxy("pxd"), mk("pxd", 2, "127.0.0.1:8", ""), true)
	eventually(t, 5*time.Second, "the shared ID dropped", func() bool { _, ok := d.CancelAddr(2); return !ok })
	// A proxy that goes is forgotten.
	if _, err := cli.Delete(t.Context(), k.Proxy("pxc")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "pxc forgotten", func() bool { _, ok := d.CancelAddr(3); return !ok })
}

// TestConcurrentRegistrationsGetDistinctIDs: proxies starting at the same
// moment race for the lowest free ID; the claim's compare makes the
// losers take others, so every ID is held once and by its record's proxy.
func TestConcurrentRegistrationsGetDistinctIDs(t *testing.T) {
	_, cli := etcdlocal.StartForTest(t)
	k := testKeys(t)
	const n = 8
	var rs []*running
	for i := range n {
		rs = append(rs, start(t, cli, record("px"+string(rune('a'+i)), "127.0.0.1:16432"), 0))
	}
	seen := make(map[uint16]string)
	for _, r := range rs {
		eventually(t, 10*time.Second, "registered", r.reg.Registered)
	}
	for i := range n {
		name := "px" + string(rune('a'+i))
		p, _, ok := readRecord(t, cli, name)
		if !ok || p.CancelID == 0 {
			t.Fatalf("%s: record %+v, %v", name, p, ok)
		}
		if other, dup := seen[p.CancelID]; dup {
			t.Fatalf("%s and %s both hold cancel ID %d", other, name, p.CancelID)
		}
		seen[p.CancelID] = name
		if holder, _, _ := get(t, cli, k.CancelID(p.CancelID)); holder != name {
			t.Fatalf("claim of %d held by %q, but %s's record says it is its", p.CancelID, holder, name)
		}
	}
}

// TestDuplicateNameIsLoud: a second proxy registering under a live
// proxy's name says so; a proxy re-registering its own record does not.
func TestDuplicateNameIsLoud(t *testing.T) {
	_, cli := etcdlocal.StartForTest(t)
	a := start(t, cli, record("px", "127.0.0.1:16432"), 0)
	<-a.reg.Ready()
	_, lease, _ := readRecord(t, cli, "px")
	// Its own lease lost: its earlier record is no one else's.
	if _, err := cli.Revoke(t.Context(), clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "registered again", func() bool {
		_, l, ok := readRecord(t, cli, "px")
		return ok && l != lease
	})
	b := start(t, cli, record("px", "127.0.0.1:26432"), 0)
	<-b.reg.Ready()
	if !strings.Contains(b.log.String(), "another live proxy is registered under this name") {
		t.Fatal("the second proxy with the name did not say so")
	}
	if strings.Contains(a.log.String(), "another live proxy") {
		t.Fatal("the proxy took its own record for another's")
	}
}
