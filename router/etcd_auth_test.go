package router_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdclient"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
)

// authDial bounds the first connection, which here includes a TLS
// handshake and etcd's bcrypt check of the password: the default 2 s ran
// out on two loaded cores under -race.
const authDial = 15 * time.Second

// TestEtcdSourceWithAuthentication: with etcd's authentication on (over
// TLS: a password is refused on http:// endpoints), the source reads the
// topology with the right user and password. (The client's own refusals
// are tested in internal/etcdclient.)
func TestEtcdSourceWithAuthentication(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	files, tc, err := etcdlocal.SelfSignedTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{ClientTLS: files})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	admin, err := etcd.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()

	keys, _ := cluster.NewKeys("authed")
	lease, err := admin.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	lag := int64(0)
	for _, m := range []cluster.Member{
		{Name: "a", Role: cluster.RolePrimary, Host: "127.0.0.1", Port: 15432, LagBytes: &lag},
		{Name: "b", Role: cluster.RoleReplica, Host: "127.0.0.1", Port: 15433, LagBytes: &lag},
	} {
		rec, err := cluster.MarshalMember(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Put(ctx, keys.Member(m.Name), string(rec), clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Put(ctx, keys.Leader(), "a", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	// root with the root role, then authentication on: from here every
	// request needs a user.
	if _, err := admin.UserAdd(ctx, "root", "root-secret"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}

	t.Run("right password routes", func(t *testing.T) {
		client, err := etcdclient.New(etcdclient.Config{Endpoints: etcd.Endpoints(), Username: "root", Password: "root-secret", TLS: tc, DialTimeout: authDial})
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		m := metrics.NewProxy(prometheus.NewRegistry())
		r := router.New(router.Config{}, nil, m)
		src := router.NewEtcd(client, router.NewPharosFormat(keys, nil), 100*time.Millisecond, nil, m)
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = src.Run(runCtx, r) }()
		defer func() { stop(); <-done }()
		deadline := time.Now().Add(5 * time.Second)
		for {
			rw, _ := r.Current()
			up := testutil.ToFloat64(m.EtcdUp)
			if rw == "a" && up == 1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("rw %q, etcd_up %v; want a, 1", rw, up)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	// Leave etcd without authentication for Close.
	authed, err := etcdclient.New(etcdclient.Config{Endpoints: etcd.Endpoints(), Username: "root", Password: "root-secret", TLS: tc, DialTimeout: authDial})
	if err == nil {
		_, _ = authed.AuthDisable(ctx)
		authed.Close()
	}
}
