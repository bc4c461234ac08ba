package router_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
)

// forge writes key with no lease, as someone with write access to the
// prefix (not an agent) can: such a record would never expire.
func (a *agent) forge(key, value string) {
	a.t.Helper()
	a.retry("forge "+key, func(ctx context.Context) error {
		_, err := a.cli.Put(ctx, key, value)
		return err
	})
}

func unleasedCount(s *etcdRun) prometheus.Gauge {
	return s.m.EtcdIgnored.WithLabelValues(metrics.IgnoredUnleased)
}

// TestEtcdUnleasedRecordsIgnored: leader and member records that are not
// attached to a lease get no traffic, in the pharos and the Patroni layout;
// each is logged once as an error and counted, however many snapshots
// include it.
func TestEtcdUnleasedRecordsIgnored(t *testing.T) {
	t.Parallel()
	ec := startEtcd(t, 1)
	pharos := pharosKeys(t, "forged")
	patroni, err := cluster.NewPatroniKeys("/service", "forged")
	if err != nil {
		t.Fatal(err)
	}
	const forgedMsg = "ignoring etcd key: not attached to a lease"

	t.Run("pharos", func(t *testing.T) {
		a := newAgent(t, etcdClient(t, ec.Endpoints()...))
		s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{Format: pharosFormat(pharos)})
		a.member(pharos, rec("n1", cluster.RolePrimary, 0))
		a.member(pharos, rec("n2", cluster.RoleReplica, 0))
		a.campaign(pharos.Leader(), "n1")
		waitRoutes(t, s.r, etcdBound, "honest cluster", "n1", "n2")

		evil := func(role cluster.Role) string {
			b, err := cluster.MarshalMember(cluster.Member{Name: "evil", Role: role, Host: "10.66.6.6", Port: 5432})
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
		a.forge(pharos.Member("evil"), evil(cluster.RoleReplica))
		s.sync(t, a)
		routesNow(t, s.r, "a forged replica", "n1", "n2")
		wantGauge(t, "unleased records", unleasedCount(s), 1)

		// The leader dies (its key goes with its lease); a forged leader
		// key and record would otherwise hold rw for ever.
		a.del(pharos.Leader())
		a.forge(pharos.Member("evil"), evil(cluster.RolePrimary))
		a.forge(pharos.Leader(), "evil")
		s.sync(t, a)
		routesNow(t, s.r, "a forged leader", "", "n2")
		wantNoRoute(t, s.r, router.RW)
		waitEpoch(t, s, 0)
		wantGauge(t, "unleased records", unleasedCount(s), 2)

		// A forged leader key naming an honest primary gets nothing either.
		a.forge(pharos.Leader(), "n1")
		s.sync(t, a)
		routesNow(t, s.r, "a forged leader key naming n1", "", "n2")
		a.member(pharos, rec("n2", cluster.RoleReplica, 1))
		s.sync(t, a)
		for _, key := range []string{pharos.Member("evil"), pharos.Leader()} {
			if n := s.logs.count(forgedMsg, "key", key); n != 2 {
				t.Errorf("%s logged %d times, want once per write (2)", key, n)
			}
		}

		// Once the forged keys are gone the honest cluster routes again.
		a.del(pharos.Leader())
		a.del(pharos.Member("evil"))
		a.campaign(pharos.Leader(), "n1")
		waitRoutes(t, s.r, etcdBound, "forged keys removed", "n1", "n2")
		waitMetric(t, etcdBound, "unleased records", unleasedCount(s), func(v float64) bool { return v == 0 })
	})

	t.Run("patroni", func(t *testing.T) {
		a := newAgent(t, etcdClient(t, ec.Endpoints()...))
		s := runEtcd(t, etcdClient(t, ec.Endpoints()...), sourceOptions{
			Format: func(log *slog.Logger) router.Format { return router.NewPatroniFormat(patroni, log) },
		})
		a.put(patroni.Member("node1"), patroniFixture(t, "primary_v4.json", 25431))
		a.put(patroni.Member("node2"), patroniFixture(t, "replica_v3.json", 25432))
		a.campaign(patroni.Leader(), "node1")
		waitRoutes(t, s.r, etcdBound, "honest cluster", "node1", "node2")

		a.forge(patroni.Member("node3"), patroniFixture(t, "replica_v3.json", 25433))
		s.sync(t, a)
		routesNow(t, s.r, "a forged replica", "node1", "node2")

		a.del(patroni.Leader())
		a.forge(patroni.Member("evil"), patroniFixture(t, "primary_v4.json", 25434))
		a.forge(patroni.Leader(), "evil")
		s.sync(t, a)
		routesNow(t, s.r, "a forged leader", "", "node2")
		wantNoRoute(t, s.r, router.RW)
		wantGauge(t, "unleased records", unleasedCount(s), 3)
		for _, key := range []string{patroni.Member("node3"), patroni.Member("evil"), patroni.Leader()} {
			if n := s.logs.count("ignoring Patroni key: not attached to a lease", "key", key); n != 1 {
				t.Errorf("%s logged %d times, want once", key, n)
			}
		}
	})
}
