package router_test

import (
	"context"
	"net"
	"strconv"
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

	reg := prometheus.NewRegistry()
	m := metrics.NewProxy(reg)
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

	// The ghost's failures are counted under its member name, like its
	// other series, and go when it leaves the topology.
	waitFailures(t, reg, "ghost", func(v float64, ok bool) bool { return ok && v >= 1 }, "ghost's failures counted")
	a.del(keys.Member("ghost"))
	waitFailures(t, reg, "ghost", func(_ float64, ok bool) bool { return !ok }, "ghost left: its failure series deleted")
	if _, ok := failureSeries(t, reg)[dead2addr(dead)]; ok {
		t.Errorf("failures labelled by address, want the member name")
	}

	// A leader etcd names but that does not answer loses rw: checks exclude,
	// whoever etcd names.
	a.member(keys, member("p", cluster.RolePrimary, dead))
	waitRoutes(t, r, 5*time.Second, "dead leader excluded", "", "r")

	// A member that answers but that etcd calls a replica never becomes rw.
	a.member(keys, member("r", cluster.RoleReplica, primary.Port))
	waitRoutes(t, r, 5*time.Second, "answering replica stays ro", "", "r")
}

// failureSeries reads pharos_backend_health_check_failures_total by backend
// label as the registry exports it (reading through the vector would
// create the series).
func failureSeries(t *testing.T, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		if mf.GetName() != "pharos_backend_health_check_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "backend" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// waitFailures waits (bounded) until cond holds for backend's failure
// series.
func waitFailures(t *testing.T, reg prometheus.Gatherer, backend string, cond func(v float64, ok bool) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, ok := failureSeries(t, reg)[backend]
		if cond(v, ok) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after 5s the series of %s is %v (exists: %v); all: %v", what, backend, v, ok, failureSeries(t, reg))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dead2addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
