package router_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
)

// TestEtcdHealthChecksOnlyExclude: with health checks on, a member etcd
// names but that does not answer is excluded (a dead replica leaves ro, a
// dead leader leaves rw empty), and a member that answers gets nothing etcd
// did not give it.
func TestEtcdHealthChecksOnlyExclude(t *testing.T) {
	pg := sharedCluster(t)
	etcd := startEtcd(t, 1)
	writer := etcdClient(t, etcd.Endpoints()...)
	a := newAgent(t, writer)
	keys, err := cluster.NewKeys("health")
	if err != nil {
		t.Fatal(err)
	}
	dead, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	primary, replica := pg.Primary(), pg.Replicas()[0]
	lag := int64(0)
	member := func(name string, role cluster.Role, port int) cluster.Member {
		return cluster.Member{Name: name, Role: role, Host: "127.0.0.1", Port: port, LagBytes: &lag}
	}
	a.member(keys, member("p", cluster.RolePrimary, primary.Port))
	a.member(keys, member("r", cluster.RoleReplica, replica.Port))
	a.member(keys, member("ghost", cluster.RoleReplica, dead))
	a.campaign(keys.Leader(), "p")

	m := metrics.NewProxy(prometheus.NewRegistry())
	r := router.New(router.Config{}, nil, m)
	checker, err := router.NewHealthChecker(router.StaticConfig{
		Interval: 500 * time.Millisecond, Timeout: 400 * time.Millisecond,
		User: pglocal.UserHealth, Password: pglocal.PasswordHealth, Database: "postgres", SSLMode: "disable",
	}, nil, m)
	if err != nil {
		t.Fatal(err)
	}
	src := router.NewEtcd(etcdClient(t, etcd.Endpoints()...), router.NewPharosFormat(keys, nil), 200*time.Millisecond, nil, m).WithHealthChecks(checker)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx, r) }()
	t.Cleanup(func() { stop(); <-done })

	waitRoutes(t, r, 5*time.Second, "ghost excluded, live members routed", "p", "r")

	// A leader etcd names but that does not answer loses rw: checks exclude,
	// whoever etcd names.
	a.member(keys, member("p", cluster.RolePrimary, dead))
	waitRoutes(t, r, 5*time.Second, "dead leader excluded", "", "r")

	// A member that answers but that etcd calls a replica never becomes rw.
	a.member(keys, member("r", cluster.RoleReplica, primary.Port))
	waitRoutes(t, r, 5*time.Second, "answering replica stays ro", "", "r")
}
