package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	clientv3 "go.etcd.io/etcd/client/v3"

	pcluster "github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/wire"
)

// registryCluster writes, on a lease as an agent would, the member records
// and the leader key of the shared PostgreSQL cluster under cluster name.
func registryCluster(t *testing.T, cli *clientv3.Client, keys pcluster.Keys) {
	t.Helper()
	ctx := t.Context()
	lease, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	lag := int64(0)
	for _, m := range []pcluster.Member{
		{Name: "pg-a", Role: pcluster.RolePrimary, Host: "127.0.0.1", Port: pgCluster.Primary().Port, LagBytes: &lag},
		{Name: "pg-b", Role: pcluster.RoleReplica, Host: "127.0.0.1", Port: pgCluster.Replicas()[0].Port, LagBytes: &lag},
	} {
		rec, err := pcluster.MarshalMember(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, keys.Member(m.Name), string(rec), clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, keys.Leader(), "pg-a", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
}

// writeScramAuthFile writes an auth_file with the app SCRAM user's
// verifier as the primary holds it.
func writeScramAuthFile(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	su, err := pgCluster.Primary().Connect(ctx, pglocal.SuperUser, "", "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	var verifier string
	if err := su.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", pglocal.UserSCRAM).Scan(&verifier); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, fmt.Appendf(nil, "%q %q\n", pglocal.UserSCRAM, verifier), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// proxyRecords reads the proxies' records by name.
func proxyRecords(t *testing.T, cli *clientv3.Client, keys pcluster.Keys) map[string]pcluster.Proxy {
	t.Helper()
	resp, err := cli.Get(t.Context(), keys.ProxiesPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]pcluster.Proxy)
	for _, kv := range resp.Kvs {
		if p, err := pcluster.ParseProxy(kv.Value); err == nil {
			out[p.Name] = p
		}
	}
	return out
}

// waitSleeping waits until the primary shows pid running pg_sleep.
func waitSleeping(t *testing.T, pid int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	su, err := pgCluster.Primary().Connect(ctx, pglocal.SuperUser, "", "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(context.Background())
	for {
		var n int
		if err := su.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%'", pid).Scan(&n); err != nil {
			t.Fatalf("waiting for pg_sleep on pid %d: %v", pid, err)
		}
		if n > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawCancel sends a CancelRequest to addr and waits for the close.
func rawCancel(t *testing.T, addr string, pid uint32, key []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(wire.AppendCancelRequest(nil, pid, key)); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		t.Fatalf("after the CancelRequest: %d bytes, %v; want a plain close", n, err)
	}
}

// TestBinaryProxyRegistry runs two `pharos proxy --source pharos` with the
// proxy's own authentication in front of one PostgreSQL and an embedded
// etcd: both register with distinct cancel IDs (a garbage record beside
// them changes nothing), ctl list shows them, a CancelRequest for a
// session on proxy A sent to proxy B cancels its query (a wrong secret
// does not), and a stopped proxy's record is gone.
func TestBinaryProxyRegistry(t *testing.T) {
	ec, cli := etcdlocal.StartForTest(t)
	keys, _ := pcluster.NewKeys("reg")
	registryCluster(t, cli, keys)
	lease, err := cli.Grant(t.Context(), 600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(t.Context(), keys.Proxy("junk"), `{"name":"junk","listeners":{"rw":"127.`, clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	authFile := writeScramAuthFile(t)
	args := func(name string) []string {
		return []string{"--source", "pharos", "--etcd", ec.Endpoints()[0], "--cluster", "reg", "--name", name,
			"--auth-type", "scram-sha-256", "--auth-file", authFile}
	}
	a := launchPharos(t, args("pxa")...)
	b := launchPharos(t, args("pxb")...)
	a.waitServing(t)
	b.waitServing(t)
	b.waitLog(t, "ignoring a proxy record")

	var recs map[string]pcluster.Proxy
	deadline := time.Now().Add(e2eWait)
	for {
		recs = proxyRecords(t, cli, keys)
		if recs["pxa"].CancelID != 0 && recs["pxb"].CancelID != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy records %+v, want pxa and pxb with cancel IDs", recs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ra, rb := recs["pxa"], recs["pxb"]
	if ra.CancelID == rb.CancelID || ra.Listeners.RW != a.rw || rb.Listeners.RO != b.ro || ra.Version == "" || ra.StartedAt.IsZero() {
		t.Fatalf("records %+v and %+v: want distinct cancel IDs and the proxies' listeners", ra, rb)
	}

	code, out, errOut := runCtlCmd(t, "--etcd", ec.Endpoints()[0], "--cluster", "reg", "list")
	if code != 0 || !strings.Contains(out, "PROXY") || !strings.Contains(out, a.rw) || !strings.Contains(out, b.rw) {
		t.Fatalf("ctl list exit %d:\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCtlCmd(t, "--etcd", ec.Endpoints()[0], "--cluster", "reg", "list", "--json")
	var doc struct {
		Proxies []pcluster.Proxy `json:"proxies"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc.Proxies) != 2 || doc.Proxies[0].Name != "pxa" {
		t.Fatalf("ctl list --json exit %d:\n%s%s", code, out, errOut)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, appDSN(a.rw, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	pid, key := conn.PgConn().PID(), slices.Clone(conn.PgConn().SecretKey())
	if proxy.CancelOwner(pid) != ra.CancelID {
		t.Fatalf("key pid %d has owner %d, want proxy A's cancel ID %d", pid, proxy.CancelOwner(pid), ra.CancelID)
	}
	var spid int32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&spid); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
		done <- err
	}()
	waitSleeping(t, spid)
	wrong := slices.Clone(key)
	wrong[0] ^= 0x55
	rawCancel(t, b.ro, pid, wrong)
	waitSleeping(t, spid) // still sleeping
	select {
	case err := <-done:
		t.Fatalf("a wrong secret through B ended the query: %v", err)
	default:
	}
	start := time.Now()
	rawCancel(t, b.ro, pid, key)
	select {
	case err := <-done:
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57014" {
			t.Fatalf("pg_sleep through A, cancelled through B: %v, want 57014", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancel sent to proxy B did not reach proxy A's session")
	}
	t.Logf("cancel through the other proxy took %v", time.Since(start))
	_ = conn.Close(ctx)

	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := a.wait(t, e2eWait); code != 0 {
		t.Errorf("A exited %d after SIGTERM, want 0", code)
	}
	if recs := proxyRecords(t, cli, keys); len(recs) != 1 || recs["pxb"].Name == "" {
		t.Errorf("after A stopped: records %+v, want pxb's alone", recs)
	}
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	b.wait(t, e2eWait)
}

// scrape returns the proxy's /metrics text.
func (p *pharosProc) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBinaryRegistersWhenEtcdComesBack: a proxy whose etcd is down at start
// still listens (no topology yet, so 57P03), says loudly that it is not
// registered (an error log, pharos_proxy_registered 0), and registers once
// etcd is back; the source patroni has no registry at all.
func TestBinaryRegistersWhenEtcdComesBack(t *testing.T) {
	ec, cli := etcdlocal.StartForTest(t)
	keys, _ := pcluster.NewKeys("late")
	registryCluster(t, cli, keys)
	if err := ec.StopMember(0); err != nil {
		t.Fatal(err)
	}
	p := launchPharos(t, "--source", "pharos", "--etcd", ec.Endpoints()[0], "--cluster", "late", "--name", "pxl", "--route-wait", "300ms")
	p.waitLog(t, "proxy not registered in etcd, retrying")
	p.waitLog(t, "proxy listening")
	if m := p.scrape(t); !strings.Contains(m, "pharos_proxy_registered 0\n") {
		t.Fatalf("metrics while etcd is down:\n%s", m)
	}
	if err := ec.StartMember(t.Context(), 0); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "proxy registered in etcd")
	p.waitServing(t)
	if m := p.scrape(t); !strings.Contains(m, "pharos_proxy_registered 1\n") || !strings.Contains(m, "pharos_proxy_cancel_id 1\n") {
		t.Fatalf("metrics once registered:\n%s", m)
	}
	if recs := proxyRecords(t, cli, keys); recs["pxl"].CancelID != 1 {
		t.Fatalf("records %+v", recs)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, e2eWait); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}
	if recs := proxyRecords(t, cli, keys); len(recs) != 0 {
		t.Errorf("records after a clean stop: %+v", recs)
	}

	q := launchPharos(t, "--source", "patroni", "--etcd", ec.Endpoints()[0], "--cluster", "late", "--route-wait", "300ms")
	q.waitLog(t, "proxy listening")
	if m := q.scrape(t); strings.Contains(m, "pharos_proxy_registered") {
		t.Error("a patroni-source proxy exports the registry's metrics")
	}
	resp, err := cli.Get(t.Context(), keys.ProxiesPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("a patroni-source proxy registered: %v, %v", resp, err)
	}
}

func TestProxyNameRefused(t *testing.T) {
	var stderr strings.Builder
	code := runProxy(t.Context(), []string{"--source", "pharos", "--etcd", "127.0.0.1:1", "--cluster", "c",
		"--name", "a/b", "--rw-listen", "127.0.0.1:0", "--ro-listen", "", "--metrics-listen", ""}, io.Discard, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), "name: \"a/b\" is not a proxy name") {
		t.Fatalf("exit %d, stderr %q; want exit %d naming the key", code, stderr.String(), exitUsage)
	}
}

func TestAdvertised(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0.0.0.0:6432", "db1:6432"}, {"[::]:6433", "db1:6433"}, {":6434", "db1:6434"},
		{"10.0.0.5:6432", "10.0.0.5:6432"}, {"[fd00::5]:6432", "[fd00::5]:6432"},
	} {
		if got := advertised(tc.in, "db1"); got != tc.want {
			t.Errorf("advertised(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
