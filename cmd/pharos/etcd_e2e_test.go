package main

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
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
)

// TestBinaryFollowsEtcd runs `pharos proxy --source pharos` against a real
// etcd: rw follows the leader key, an etcd outage is loud while the last
// topology keeps serving, and a proxy whose etcd is unreachable from the
// start refuses rw with 57P03 instead of exiting or guessing.
func TestBinaryFollowsEtcd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	writer, err := etcd.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()

	keys, _ := pcluster.NewKeys("e2e")
	primary, replica := pgCluster.Primary(), pgCluster.Replicas()[0]
	// Agents write their records on a lease; the proxy ignores any other.
	lease, err := writer.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	lag := int64(0)
	for _, m := range []pcluster.Member{
		{Name: "pg-a", Role: pcluster.RolePrimary, Host: "127.0.0.1", Port: primary.Port, LagBytes: &lag},
		{Name: "pg-b", Role: pcluster.RoleReplica, Host: "127.0.0.1", Port: replica.Port, LagBytes: &lag},
	} {
		rec, err := pcluster.MarshalMember(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := writer.Put(ctx, keys.Member(m.Name), string(rec), clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := writer.Put(ctx, keys.Leader(), "pg-a", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}

	serverPort := func(t *testing.T, addr string) int {
		t.Helper()
		conn, err := pgx.Connect(ctx, appDSN(addr, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var port int
		if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			t.Fatal(err)
		}
		return port
	}

	t.Run("follows the leader key and survives an etcd outage", func(t *testing.T) {
		p := launchPharos(t, "--source", "pharos", "--etcd", etcd.Endpoints()[0], "--cluster", "e2e")
		p.waitServing(t)
		if got := serverPort(t, p.rw); got != primary.Port {
			t.Fatalf("rw reached port %d, want the leader's %d", got, primary.Port)
		}
		if got := serverPort(t, p.ro); got != replica.Port {
			t.Fatalf("ro reached port %d, want the replica's %d", got, replica.Port)
		}
		if err := etcd.StopMember(0); err != nil {
			t.Fatal(err)
		}
		p.waitLog(t, "etcd unreachable")
		if got := serverPort(t, p.rw); got != primary.Port {
			t.Errorf("during the outage rw reached port %d, want the last known leader's %d", got, primary.Port)
		}
		if err := etcd.StartMember(ctx, 0); err != nil {
			t.Fatal(err)
		}
		p.waitLog(t, "etcd reachable again")
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := p.wait(t, e2eWait); code != 0 {
			t.Errorf("exit %d after SIGTERM, want 0", code)
		}
	})

	t.Run("unreachable etcd at start refuses rw with 57P03", func(t *testing.T) {
		dead, err := pglocal.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		p := launchPharos(t, "--source", "pharos", "--etcd", "127.0.0.1:"+strconv.Itoa(dead), "--cluster", "e2e", "--route-wait", "300ms")
		p.waitLog(t, "etcd unreachable")
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		_, err = pgx.Connect(cctx, appDSN(p.rw, ""))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57P03" {
			t.Errorf("rw connect: %v, want FATAL 57P03", err)
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := p.wait(t, e2eWait); code != 0 {
			t.Errorf("exit %d after SIGTERM, want 0", code)
		}
	})
}

// TestBinaryFollowsEtcdOverTLS: with --etcd-cacert the proxy verifies
// etcd's certificate and follows the cluster; without the CA it cannot
// trust etcd, says so, and routes nothing.
func TestBinaryFollowsEtcdOverTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	certPEM, keyPEM, _ := selfSigned(t, "etcd")
	files := &etcdlocal.TLSFiles{CertFile: filepath.Join(dir, "etcd.crt"), KeyFile: filepath.Join(dir, "etcd.key"), CAFile: filepath.Join(dir, "etcd.crt")}
	writeFile(t, files.CertFile, certPEM)
	writeFile(t, files.KeyFile, keyPEM)
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{ClientTLS: files})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	writer, err := etcd.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	keys, _ := pcluster.NewKeys("tls")
	primary := pgCluster.Primary()
	rec, err := pcluster.MarshalMember(pcluster.Member{Name: "pg-a", Role: pcluster.RolePrimary, Host: "127.0.0.1", Port: primary.Port})
	if err != nil {
		t.Fatal(err)
	}
	lease, err := writer.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Put(ctx, keys.Member("pg-a"), string(rec), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Put(ctx, keys.Leader(), "pg-a", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	endpoint := etcd.Endpoints()[0]
	if !strings.HasPrefix(endpoint, "https://") {
		t.Fatalf("endpoint %s is not https", endpoint)
	}

	t.Run("with the CA it routes", func(t *testing.T) {
		p := launchPharos(t, "--source", "pharos", "--etcd", endpoint, "--cluster", "tls", "--etcd-cacert", files.CAFile)
		p.waitServing(t)
		conn, err := pgx.Connect(ctx, appDSN(p.rw, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var port int
		if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil || port != primary.Port {
			t.Errorf("rw reached port %d (err %v), want %d", port, err, primary.Port)
		}
	})
	t.Run("without the CA it trusts nothing and routes nothing", func(t *testing.T) {
		p := launchPharos(t, "--source", "pharos", "--etcd", endpoint, "--cluster", "tls", "--route-wait", "300ms")
		p.waitLog(t, "etcd unreachable")
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		_, err := pgx.Connect(cctx, appDSN(p.rw, ""))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57P03" {
			t.Errorf("rw connect: %v, want FATAL 57P03", err)
		}
	})
}
