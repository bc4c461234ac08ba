package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/metrics"
	"github.com/pharos-ha/pharos/internal/router"
)

// TestEtcdSourceWithAuthentication: with etcd's authentication on, the
// source reads the topology with the right user and password, and a wrong
// password is refused when the client is made, with etcd's reason.
func TestEtcdSourceWithAuthentication(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{})
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
	lag := int64(0)
	for _, m := range []cluster.Member{
		{Name: "a", Role: cluster.RolePrimary, Host: "127.0.0.1", Port: 15432, LagBytes: &lag},
		{Name: "b", Role: cluster.RoleReplica, Host: "127.0.0.1", Port: 15433, LagBytes: &lag},
	} {
		rec, err := cluster.MarshalMember(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Put(ctx, keys.Member(m.Name), string(rec)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Put(ctx, keys.Leader(), "a"); err != nil {
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

	t.Run("wrong password is refused with etcd's reason", func(t *testing.T) {
		client, err := router.NewEtcdClient(router.EtcdConfig{Endpoints: etcd.Endpoints(), Username: "root", Password: "wrong"})
		if err == nil {
			client.Close()
			t.Fatal("NewEtcdClient with a wrong password succeeded")
		}
		if !strings.Contains(err.Error(), "authentication failed") {
			t.Errorf("error %q does not say authentication failed", err)
		}
	})
	t.Run("right password routes", func(t *testing.T) {
		client, err := router.NewEtcdClient(router.EtcdConfig{Endpoints: etcd.Endpoints(), Username: "root", Password: "root-secret"})
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
	authed, err := router.NewEtcdClient(router.EtcdConfig{Endpoints: etcd.Endpoints(), Username: "root", Password: "root-secret"})
	if err == nil {
		_, _ = authed.AuthDisable(ctx)
		authed.Close()
	}
}
