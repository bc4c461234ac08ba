package proxy_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	pharoscluster "github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// deadPort returns a loopback port nothing listens on.
func deadPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	return port
}

func queryAuthConfig() proxy.Config {
	return proxy.Config{AuthType: proxy.AuthSCRAM, AuthUser: authQueryUser, AuthPassword: authQueryPassword, AuthCacheTTL: time.Hour}
}

// TestProxyAuthQueryNoPrimary: with no primary (a failover under way) the
// lookup runs on a replica, since the verifier replicates, so ro logins go
// on; with no server at all, the client is told so after route_wait.
func TestProxyAuthQueryNoPrimary(t *testing.T) {
	setupAuthQuery(t)
	waitReplicaVerifier(t, authQueryUser)
	waitReplicaVerifier(t, pglocal.UserSCRAM)
	t.Run("replicas only", func(t *testing.T) {
		p := startProxy(t, proxyOptions{
			Config:   queryAuthConfig(),
			Backends: cluster.Replicas(),
			Ready:    func(rw string, ro []string) bool { return rw == "" && len(ro) > 0 },
		})
		whoami(t, p.connect(t, router.RO, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, true)
		err := tryConnect(t, p.DSN(router.RO, pglocal.UserSCRAM, "password=wrong-secret"))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", pglocal.UserSCRAM))
		// rw authenticates the same way and then has nowhere to go.
		err = tryConnect(t, p.DSN(router.RW, pglocal.UserHealth, ""))
		wantPgError(t, err, "57P03", "pharos: no primary is available for the rw endpoint")
	})
	t.Run("no server at all", func(t *testing.T) {
		cfg := queryAuthConfig()
		cfg.RouteWait = 500 * time.Millisecond
		p := startProxy(t, proxyOptions{
			Config:   cfg,
			Backends: []*pglocal.Instance{{Name: "gone", Port: deadPort(t)}},
			Ready:    func(string, []string) bool { return true },
		})
		start := time.Now()
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, ""))
		wantPgError(t, err, "08006", fmt.Sprintf("pharos: could not look up user %q to authenticate it: no primary or replica is available to run auth_query on (waited route_wait, 500ms)", pglocal.UserSCRAM))
		if d := time.Since(start); d < 500*time.Millisecond || d > 5*time.Second {
			t.Errorf("answered after %v, want route_wait (500ms) and a little", d)
		}
	})
}

// TestProxyAuthQueryEtcdDown: the proxy routes from etcd, and etcd goes
// away. It serves the last known topology, so cached users log in and
// uncached ones are looked up on the primary it knows; a proxy that starts
// while etcd is down knows no server, and an uncached user is told so.
func TestProxyAuthQueryEtcdDown(t *testing.T) {
	setupAuthQuery(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ec, err := etcdlocal.Start(ctx, etcdlocal.Options{})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = ec.Close()
		}
	})
	writer, err := ec.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	keys, err := pharoscluster.NewKeys("auth-etcd-down")
	if err != nil {
		t.Fatal(err)
	}
	a := etcdAgent{t: t, cli: writer, keys: keys}
	primary, replica := cluster.Primary(), cluster.Replicas()[0]
	cfg := queryAuthConfig()
	p := startEtcdProxy(t, ec, keys, cfg)
	a.member(primary, pharoscluster.RolePrimary)
	a.member(replica, pharoscluster.RoleReplica)
	a.campaign(primary.Name)
	waitRouter(t, p.Router, primary.Name, replica.Name)
	whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, false) // now cached

	if err := ec.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, false)
	whoami(t, p.connect(t, router.RO, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, true)
	whoami(t, p.connect(t, router.RW, pglocal.UserHealth, ""), pglocal.UserHealth, false) // looked up now

	cfg.RouteWait = 300 * time.Millisecond
	cold := startEtcdProxy(t, ec, keys, cfg)
	err = tryConnect(t, cold.DSN(router.RW, pglocal.UserSCRAM, ""))
	wantPgError(t, err, "08006", fmt.Sprintf("pharos: could not look up user %q to authenticate it: no primary or replica is available to run auth_query on (waited route_wait, 300ms)", pglocal.UserSCRAM))
}
