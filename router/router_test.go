package router_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
)

// --- helpers for the pure router tests (no servers) ---

func newRouter(t *testing.T, cfg router.Config) (*router.Router, *metrics.Proxy) {
	t.Helper()
	m := metrics.NewProxy(prometheus.NewRegistry())
	return router.New(cfg, nil, m), m
}

func primary(name string) router.Member {
	return router.Member{Name: name, Addr: name + ":5432", Role: router.RolePrimary, Healthy: true, LagBytes: -1}
}

func replica(name string, lag int64) router.Member {
	return router.Member{Name: name, Addr: name + ":5432", Role: router.RoleReplica, Healthy: true, LagBytes: lag}
}

func unhealthy(m router.Member) router.Member {
	m.Healthy = false
	return m
}

func noLB(m router.Member) router.Member {
	m.NoLoadBalance = true
	return m
}

func withAddr(m router.Member, addr string) router.Member {
	m.Addr = addr
	return m
}

func snap(primary string, members ...router.Member) router.Snapshot {
	return router.Snapshot{Members: members, Primary: primary}
}

// tryAcquire asks for a route without waiting: with a context that has
// already ended, Acquire returns a route when one is available now and
// ErrNoRoute otherwise.
func tryAcquire(r *router.Router, ep router.Endpoint, exclude ...*router.Backend) (*router.Route, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return r.AcquireExcept(ctx, ep, exclude)
}

// mustAcquire returns a route available now; it is released when the test
// ends.
func mustAcquire(t *testing.T, r *router.Router, ep router.Endpoint, exclude ...*router.Backend) *router.Route {
	t.Helper()
	rt, err := tryAcquire(r, ep, exclude...)
	if err != nil {
		t.Fatalf("acquire %s: %v", ep, err)
	}
	t.Cleanup(rt.Release)
	return rt
}

// wantNoRoute checks that ep has no route now.
func wantNoRoute(t *testing.T, r *router.Router, ep router.Endpoint, exclude ...*router.Backend) {
	t.Helper()
	rt, err := tryAcquire(r, ep, exclude...)
	if err == nil {
		rt.Release()
		t.Fatalf("acquire %s: got route to %s, want ErrNoRoute", ep, rt.Backend.Name)
	}
	if !errors.Is(err, router.ErrNoRoute) {
		t.Fatalf("acquire %s: err = %v, want ErrNoRoute", ep, err)
	}
}

func revoked(rt *router.Route) bool {
	select {
	case <-rt.Revoked():
		return true
	default:
		return false
	}
}

func gauge(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

func wantGauge(t *testing.T, what string, c prometheus.Collector, want float64) {
	t.Helper()
	if got := testutil.ToFloat64(c); got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// --- rw ---

func TestRWTarget(t *testing.T) {
	for _, tc := range []struct {
		name   string
		snap   router.Snapshot
		wantRW string
	}{
		{
			name:   "named healthy primary",
			snap:   snap("p", primary("p"), replica("r", 0)),
			wantRW: "p",
		},
		{
			name: "named primary unhealthy",
			snap: snap("p", unhealthy(primary("p")), replica("r", 0)),
		},
		{
			name: "primary names a replica",
			snap: snap("r", primary("p"), replica("r", 0)),
		},
		{
			name: "primary names a member of unknown role",
			snap: snap("u", router.Member{Name: "u", Addr: "u:5432", Role: router.RoleUnknown, Healthy: true, LagBytes: -1}),
		},
		{
			name: "primary names a member not listed",
			snap: snap("gone", primary("p"), replica("r", 0)),
		},
		{
			name: "no primary named though one claims the role",
			snap: snap("", primary("p"), replica("r", 0)),
		},
		{
			name: "conflict of two refuses rw even with a primary named",
			snap: router.Snapshot{
				Members:  []router.Member{primary("p"), primary("q")},
				Primary:  "p",
				Conflict: []string{"p", "q"},
			},
		},
		{
			name: "conflict of one member is not split-brain",
			snap: router.Snapshot{
				Members:  []router.Member{primary("p"), replica("r", 0)},
				Primary:  "p",
				Conflict: []string{"p"},
			},
			wantRW: "p",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, m := newRouter(t, router.Config{})
			r.Update(tc.snap)
			rw, _ := r.Current()
			if rw != tc.wantRW {
				t.Errorf("Current rw = %q, want %q", rw, tc.wantRW)
			}
			if tc.wantRW == "" {
				wantGauge(t, "RWAvailable", m.RWAvailable, 0)
				wantNoRoute(t, r, router.RW)
				return
			}
			wantGauge(t, "RWAvailable", m.RWAvailable, 1)
			rt := mustAcquire(t, r, router.RW)
			if rt.Backend.Name != tc.wantRW || rt.Endpoint != router.RW {
				t.Errorf("route = %s on %s, want %s on rw", rt.Backend.Name, rt.Endpoint, tc.wantRW)
			}
		})
	}
}

func TestSplitBrainCounter(t *testing.T) {
	r, m := newRouter(t, router.Config{})
	normal := snap("p", primary("p"), replica("q", 0))
	split := router.Snapshot{
		Members:  []router.Member{primary("p"), primary("q")},
		Primary:  "p",
		Conflict: []string{"p", "q"},
	}
	steps := []struct {
		name      string
		snap      router.Snapshot
		wantCount float64
		wantRW    string
	}{
		{"normal", normal, 0, "p"},
		{"split-brain starts", split, 1, ""},
		{"split-brain lasts", split, 1, ""},
		{"split-brain still lasts", split, 1, ""},
		{"split-brain clears", normal, 1, "p"},
		{"split-brain recurs", split, 2, ""},
	}
	for _, st := range steps {
		r.Update(st.snap)
		if got := gauge(t, m.SplitBrain); got != st.wantCount {
			t.Errorf("after %s: split-brain total = %v, want %v", st.name, got, st.wantCount)
		}
		if rw, _ := r.Current(); rw != st.wantRW {
			t.Errorf("after %s: rw = %q, want %q", st.name, rw, st.wantRW)
		}
	}
}

func TestRWRevocation(t *testing.T) {
	base := snap("p", primary("p"), replica("r", 0), replica("s", 0))
	for _, tc := range []struct {
		name string
		next router.Snapshot
		// wantRevoked says whether the rw route on p is revoked.
		wantRevoked bool
		wantRW      string
	}{
		{
			name:        "same snapshot again",
			next:        base,
			wantRevoked: false, wantRW: "p",
		},
		{
			name:        "same primary, replicas change",
			next:        snap("p", primary("p"), replica("r", 4096), unhealthy(replica("s", -1)), replica("t", 0)),
			wantRevoked: false, wantRW: "p",
		},
		{
			name:        "new primary named",
			next:        snap("r", replica("p", 0), primary("r"), replica("s", 0)),
			wantRevoked: true, wantRW: "r",
		},
		{
			name:        "primary becomes unhealthy",
			next:        snap("p", unhealthy(primary("p")), replica("r", 0), replica("s", 0)),
			wantRevoked: true,
		},
		{
			name:        "primary no longer named",
			next:        snap("", primary("p"), replica("r", 0), replica("s", 0)),
			wantRevoked: true,
		},
		{
			name:        "primary leaves the topology",
			next:        snap("", replica("r", 0), replica("s", 0)),
			wantRevoked: true,
		},
		{
			name:        "split-brain",
			next:        router.Snapshot{Members: []router.Member{primary("p"), primary("r"), replica("s", 0)}, Primary: "p", Conflict: []string{"p", "r"}},
			wantRevoked: true,
		},
		{
			name:        "primary address changes",
			next:        snap("p", withAddr(primary("p"), "p-new:5432"), replica("r", 0), replica("s", 0)),
			wantRevoked: true, wantRW: "p",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, m := newRouter(t, router.Config{})
			r.Update(base)
			rw := mustAcquire(t, r, router.RW)
			ro1 := mustAcquire(t, r, router.RO)
			ro2 := mustAcquire(t, r, router.RO)
			if names := []string{ro1.Backend.Name, ro2.Backend.Name}; slices.Contains(names, "p") {
				t.Fatalf("ro routes went to %v, want replicas only", names)
			}
			before := gauge(t, m.TopologyChanges)

			r.Update(tc.next)

			if got := revoked(rw); got != tc.wantRevoked {
				t.Errorf("rw route on p revoked = %v, want %v", got, tc.wantRevoked)
			}
			// A change of rw target never revokes ro routes on members
			// that stay healthy replicas; one that is promoted loses them
			// (see TestRORevocation).
			for _, ro := range []*router.Route{ro1, ro2} {
				stillReplica := slices.ContainsFunc(tc.next.Members, func(m router.Member) bool {
					return m.Name == ro.Backend.Name && m.Healthy && m.Role == router.RoleReplica
				})
				if stillReplica && revoked(ro) {
					t.Errorf("ro route on %s revoked by an rw change", ro.Backend.Name)
				}
			}
			if tc.wantRevoked && !strings.Contains(rw.RevokedBecause(), " ") {
				t.Errorf("rw route revoked without a reason: %q", rw.RevokedBecause())
			}
			if got, _ := r.Current(); got != tc.wantRW {
				t.Errorf("rw = %q, want %q", got, tc.wantRW)
			}
			if tc.wantRevoked && gauge(t, m.TopologyChanges) == before {
				t.Errorf("topology changes total did not move on an rw change")
			}
			if tc.wantRW == "" {
				wantGauge(t, "RWAvailable", m.RWAvailable, 0)
				wantNoRoute(t, r, router.RW)
				return
			}
			wantGauge(t, "RWAvailable", m.RWAvailable, 1)
			next := mustAcquire(t, r, router.RW)
			if next.Backend.Name != tc.wantRW {
				t.Errorf("new rw route to %s, want %s", next.Backend.Name, tc.wantRW)
			}
			if revoked(next) {
				t.Errorf("new rw route is already revoked")
			}
			if tc.wantRevoked && next.Backend == rw.Backend {
				t.Errorf("new rw route uses the old backend %p (%s); want a new one", next.Backend, next.Backend.Addr)
			}
			if want := memberAddr(tc.next, tc.wantRW); next.Backend.Addr != want {
				t.Errorf("new rw route addr %q, want %q", next.Backend.Addr, want)
			}
		})
	}
}

func memberAddr(s router.Snapshot, name string) string {
	for _, m := range s.Members {
		if m.Name == name {
			return m.Addr
		}
	}
	return ""
}

// --- ro ---

func TestROLeastConnections(t *testing.T) {
	r, m := newRouter(t, router.Config{})
	r.Update(snap("p", primary("p"), replica("r1", 0), replica("r2", 0), replica("r3", 0)))

	byName := map[string][]*router.Route{}
	for range 9 {
		rt := mustAcquire(t, r, router.RO)
		byName[rt.Backend.Name] = append(byName[rt.Backend.Name], rt)
	}
	for _, name := range []string{"r1", "r2", "r3"} {
		if n := len(byName[name]); n != 3 {
			t.Errorf("%s got %d of 9 routes, want 3 (spread %v)", name, n, counts(byName))
		}
		wantGauge(t, "sessions of "+name, m.BackendSessions.WithLabelValues(name), 3)
	}
	if n := len(byName["p"]); n != 0 {
		t.Errorf("primary got %d ro routes, want 0", n)
	}

	// r2 drops to 1 and r3 to 2: the next two go to r2, then the loads are
	// even again.
	byName["r2"][0].Release()
	byName["r2"][1].Release()
	byName["r3"][0].Release()
	wantGauge(t, "sessions of r2", m.BackendSessions.WithLabelValues("r2"), 1)
	for i, want := range []string{"r2", "r2"} {
		if rt := mustAcquire(t, r, router.RO); rt.Backend.Name != want {
			t.Errorf("acquire %d after releases went to %s, want %s (least loaded)", i, rt.Backend.Name, want)
		}
	}
	if rt := mustAcquire(t, r, router.RO); rt.Backend.Name != "r3" {
		t.Errorf("acquire went to %s, want r3 (2 sessions, others 3)", rt.Backend.Name)
	}
}

func counts(m map[string][]*router.Route) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = len(v)
	}
	return out
}

func TestROEligibility(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    router.Config
		snap   router.Snapshot
		wantRO []string
		// wantPick is where ro sessions go now ("" for ErrNoRoute).
		wantPick []string
	}{
		{
			name:     "healthy replicas, primary not in ro",
			snap:     snap("p", primary("p"), replica("r1", 0), replica("r2", 10)),
			wantRO:   []string{"r1", "r2"},
			wantPick: []string{"r1", "r2"},
		},
		{
			name:     "unhealthy replica excluded",
			snap:     snap("p", primary("p"), unhealthy(replica("r1", 0)), replica("r2", 0)),
			wantRO:   []string{"r2"},
			wantPick: []string{"r2"},
		},
		{
			name:     "noloadbalance excluded",
			snap:     snap("p", primary("p"), noLB(replica("r1", 0)), replica("r2", 0)),
			wantRO:   []string{"r2"},
			wantPick: []string{"r2"},
		},
		{
			name:     "lag over the limit excluded, at the limit and unknown kept",
			cfg:      router.Config{MaxLagBytes: 1000},
			snap:     snap("p", primary("p"), replica("over", 1001), replica("at", 1000), replica("unknown", -1)),
			wantRO:   []string{"at", "unknown"},
			wantPick: []string{"at", "unknown"},
		},
		{
			name:     "no lag limit by default",
			snap:     snap("p", primary("p"), replica("far", 1<<40)),
			wantRO:   []string{"far"},
			wantPick: []string{"far"},
		},
		{
			name: "no eligible replica without fallback",
			snap: snap("p", primary("p"), unhealthy(replica("r1", 0)), noLB(replica("r2", 0))),
		},
		{
			name:     "no eligible replica falls back to the primary",
			cfg:      router.Config{ROFallbackToPrimary: true, MaxLagBytes: 10},
			snap:     snap("p", primary("p"), unhealthy(replica("r1", 0)), replica("r2", 11)),
			wantPick: []string{"p"},
		},
		{
			name:     "fallback unused while a replica is eligible",
			cfg:      router.Config{ROFallbackToPrimary: true},
			snap:     snap("p", primary("p"), unhealthy(replica("r1", 0)), replica("r2", 0)),
			wantRO:   []string{"r2"},
			wantPick: []string{"r2"},
		},
		{
			name: "fallback needs an rw target",
			cfg:  router.Config{ROFallbackToPrimary: true},
			snap: snap("", primary("p"), unhealthy(replica("r1", 0))),
		},
		{
			name: "member of unknown role is never ro",
			snap: snap("", router.Member{Name: "u", Addr: "u:5432", Role: router.RoleUnknown, Healthy: true, LagBytes: 0}),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, m := newRouter(t, tc.cfg)
			r.Update(tc.snap)
			if _, ro := r.Current(); !slices.Equal(sorted(ro), tc.wantRO) {
				t.Errorf("Current ro = %v, want %v", ro, tc.wantRO)
			}
			wantGauge(t, "ROBackends", m.ROBackends, float64(len(tc.wantRO)))
			if len(tc.wantPick) == 0 {
				wantNoRoute(t, r, router.RO)
				return
			}
			// Several rounds so every eligible backend gets picked.
			got := map[string]bool{}
			for range 3 * len(tc.wantPick) {
				rt := mustAcquire(t, r, router.RO)
				got[rt.Backend.Name] = true
			}
			for name := range got {
				if !slices.Contains(tc.wantPick, name) {
					t.Errorf("ro route went to %s, want only %v", name, tc.wantPick)
				}
			}
			for _, name := range tc.wantPick {
				if !got[name] {
					t.Errorf("no ro route went to %s (eligible)", name)
				}
			}
		})
	}
}

func TestRORevocation(t *testing.T) {
	base := snap("p", primary("p"), replica("r1", 0), replica("r2", 0))
	for _, tc := range []struct {
		name        string
		fallback    bool // ro_fallback_to_primary
		next        router.Snapshot
		wantRevoked bool     // the route on r1
		wantWhy     string   // part of RevokedBecause when revoked
		wantRO      []string // the ro set afterwards
	}{
		{
			name:   "lag over the limit stops new sessions only",
			next:   snap("p", primary("p"), replica("r1", 1001), replica("r2", 0)),
			wantRO: []string{"r2"},
		},
		{
			name:   "noloadbalance stops new sessions only",
			next:   snap("p", primary("p"), noLB(replica("r1", 0)), replica("r2", 0)),
			wantRO: []string{"r2"},
		},
		{
			name:        "unhealthy revokes",
			next:        snap("p", primary("p"), unhealthy(replica("r1", 0)), replica("r2", 0)),
			wantRevoked: true,
			wantWhy:     "unhealthy",
			wantRO:      []string{"r2"},
		},
		{
			name:        "removed revokes",
			next:        snap("p", primary("p"), replica("r2", 0)),
			wantRevoked: true,
			wantWhy:     "left the topology",
			wantRO:      []string{"r2"},
		},
		{
			name:        "address change revokes",
			next:        snap("p", primary("p"), withAddr(replica("r1", 0), "r1-new:5432"), replica("r2", 0)),
			wantRevoked: true,
			wantWhy:     "left the topology or moved",
			wantRO:      []string{"r1", "r2"},
		},
		{
			// The ro endpoint promises read-only sessions; a promoted
			// replica is writable.
			name:        "promotion revokes",
			next:        snap("r1", unhealthy(primary("p")), primary("r1"), replica("r2", 0)),
			wantRevoked: true,
			wantWhy:     "promoted to primary",
			wantRO:      []string{"r2"},
		},
		{
			name:        "promotion while the old primary still claims the role revokes",
			next:        router.Snapshot{Members: []router.Member{primary("p"), primary("r1"), replica("r2", 0)}, Conflict: []string{"p", "r1"}},
			wantRevoked: true,
			wantWhy:     "promoted to primary",
			wantRO:      []string{"r2"},
		},
		{
			name:     "promotion keeps it with ro_fallback_to_primary",
			fallback: true,
			next:     snap("r1", unhealthy(primary("p")), primary("r1"), replica("r2", 0)),
			wantRO:   []string{"r2"},
		},
		{
			name:        "a healthy member of unknown role revokes, fallback or not",
			fallback:    true,
			next:        snap("p", primary("p"), router.Member{Name: "r1", Addr: "r1:5432", Role: router.RoleUnknown, Healthy: true, LagBytes: -1}, replica("r2", 0)),
			wantRevoked: true,
			wantWhy:     "no longer a replica",
			wantRO:      []string{"r2"},
		},
		{
			name:   "lag change within the limit keeps it",
			next:   snap("p", primary("p"), replica("r1", 999), replica("r2", 0)),
			wantRO: []string{"r1", "r2"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, m := newRouter(t, router.Config{MaxLagBytes: 1000, ROFallbackToPrimary: tc.fallback})
			r.Update(base)
			on := map[string]*router.Route{}
			for range 2 {
				rt := mustAcquire(t, r, router.RO)
				on[rt.Backend.Name] = rt
			}
			if on["r1"] == nil || on["r2"] == nil {
				t.Fatalf("two ro routes went to %v, want one on each replica", slices.Collect(mapKeys(on)))
			}

			r.Update(tc.next)

			if got := revoked(on["r1"]); got != tc.wantRevoked {
				t.Errorf("route on r1 revoked = %v, want %v", got, tc.wantRevoked)
			} else if got && !strings.Contains(on["r1"].RevokedBecause(), tc.wantWhy) {
				t.Errorf("route on r1 revoked because %q, want it to say %q", on["r1"].RevokedBecause(), tc.wantWhy)
			}
			if revoked(on["r2"]) {
				t.Errorf("route on r2 revoked; r2 did not change")
			}
			// Current does not promise an order for ro.
			if _, ro := r.Current(); !slices.Equal(sorted(ro), tc.wantRO) {
				t.Errorf("ro = %v, want %v", ro, tc.wantRO)
			}
			wantGauge(t, "ROBackends", m.ROBackends, float64(len(tc.wantRO)))
			for range 4 {
				rt := mustAcquire(t, r, router.RO)
				if !slices.Contains(tc.wantRO, rt.Backend.Name) {
					t.Errorf("new ro route went to %s, want one of %v", rt.Backend.Name, tc.wantRO)
				}
				if rt.Backend.Name == "r1" && rt.Backend.Addr != memberAddr(tc.next, "r1") {
					t.Errorf("new ro route to r1 dials %s, want %s", rt.Backend.Addr, memberAddr(tc.next, "r1"))
				}
			}
		})
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func mapKeys[M ~map[K]V, K comparable, V any](m M) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// --- Acquire ---

func TestAcquireWaits(t *testing.T) {
	ready := snap("p", primary("p"), replica("r", 0))
	type result struct {
		rt  *router.Route
		err error
	}
	for _, tc := range []struct {
		name string
		ep   router.Endpoint
		// first is installed while Acquire waits; it must not satisfy it.
		first router.Snapshot
		// then is installed next; nil-Members means: let the context end.
		then     router.Snapshot
		wantName string
	}{
		{name: "rw waits for a primary", ep: router.RW, first: snap("", replica("r", 0)), then: ready, wantName: "p"},
		{name: "ro waits for a replica", ep: router.RO, first: snap("p", primary("p")), then: ready, wantName: "r"},
		{name: "rw gives up when the context ends", ep: router.RW, first: snap("", replica("r", 0))},
		{name: "ro gives up when the context ends", ep: router.RO, first: snap("p", primary("p"), unhealthy(replica("r", 0)))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r, _ := newRouter(t, router.Config{})
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				defer cancel()
				done := make(chan result, 1)
				go func() {
					rt, err := r.Acquire(ctx, tc.ep)
					done <- result{rt, err}
				}()
				synctest.Wait()
				select {
				case res := <-done:
					t.Fatalf("Acquire returned before any update: %v, %v", res.rt, res.err)
				default:
				}
				r.Update(tc.first)
				synctest.Wait()
				select {
				case res := <-done:
					t.Fatalf("Acquire returned after an update that offers no %s route: %v, %v", tc.ep, res.rt, res.err)
				default:
				}
				if tc.then.Members != nil {
					r.Update(tc.then)
				}
				res := <-done
				if tc.wantName == "" {
					if res.err == nil {
						res.rt.Release()
						t.Fatalf("Acquire: got route to %s, want ErrNoRoute", res.rt.Backend.Name)
					}
					if !errors.Is(res.err, router.ErrNoRoute) {
						t.Fatalf("Acquire: err = %v, want ErrNoRoute", res.err)
					}
					return
				}
				if res.err != nil {
					t.Fatalf("Acquire: %v", res.err)
				}
				defer res.rt.Release()
				if res.rt.Backend.Name != tc.wantName || res.rt.Endpoint != tc.ep {
					t.Errorf("route to %s on %s, want %s on %s", res.rt.Backend.Name, res.rt.Endpoint, tc.wantName, tc.ep)
				}
			})
		})
	}
}

func TestAcquireCanceled(t *testing.T) {
	r, _ := newRouter(t, router.Config{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		rt, err := r.Acquire(ctx, router.RW)
		if err == nil {
			rt.Release()
		}
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, router.ErrNoRoute) {
			t.Errorf("err = %v, want ErrNoRoute", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Acquire did not return within 5s of its context being canceled")
	}
}

func TestAcquireExcept(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     router.Config
		snap    router.Snapshot
		ep      router.Endpoint
		exclude []string
		want    []string // where routes may go
	}{
		{
			name:    "skips an excluded replica",
			snap:    snap("p", primary("p"), replica("r1", 0), replica("r2", 0), replica("r3", 0)),
			ep:      router.RO,
			exclude: []string{"r1"},
			want:    []string{"r2", "r3"},
		},
		{
			name:    "skips several excluded replicas",
			snap:    snap("p", primary("p"), replica("r1", 0), replica("r2", 0), replica("r3", 0)),
			ep:      router.RO,
			exclude: []string{"r1", "r3"},
			want:    []string{"r2"},
		},
		{
			name:    "excluded replicas fall back to the primary when allowed",
			cfg:     router.Config{ROFallbackToPrimary: true},
			snap:    snap("p", primary("p"), replica("r1", 0)),
			ep:      router.RO,
			exclude: []string{"r1"},
			want:    []string{"p"},
		},
		// The doc comment of AcquireExcept: "skips the backends in exclude
		// ..., unless nothing else is available". When the excluded backend
		// is the only one, it is returned again (the proxy's attach loop
		// checks for exactly that and reports the connect failure).
		{
			name:    "only replica excluded is returned again",
			snap:    snap("p", primary("p"), replica("r1", 0)),
			ep:      router.RO,
			exclude: []string{"r1"},
			want:    []string{"r1"},
		},
		{
			name:    "only primary excluded is returned again",
			snap:    snap("p", primary("p"), replica("r1", 0)),
			ep:      router.RW,
			exclude: []string{"p"},
			want:    []string{"p"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRouter(t, tc.cfg)
			r.Update(tc.snap)
			exclude := backends(t, r, tc.exclude)
			// Several rounds: later picks see the load of earlier ones.
			for range 2 * len(tc.snap.Members) {
				rt, err := tryAcquire(r, tc.ep, exclude...)
				if err != nil {
					t.Fatalf("AcquireExcept(%s, exclude %v): %v, want a route to one of %v", tc.ep, tc.exclude, err, tc.want)
				}
				t.Cleanup(rt.Release)
				if !slices.Contains(tc.want, rt.Backend.Name) {
					t.Errorf("route to %s, want one of %v", rt.Backend.Name, tc.want)
				}
			}
		})
	}
}

// backends returns the Backend pointers of the named members, found by
// acquiring (and releasing) routes on both endpoints.
func backends(t *testing.T, r *router.Router, names []string) []*router.Backend {
	t.Helper()
	found := map[string]*router.Backend{}
	for _, ep := range []router.Endpoint{router.RW, router.RO} {
		var rts []*router.Route
		for range 16 {
			rt, err := tryAcquire(r, ep)
			if err != nil {
				break
			}
			rts = append(rts, rt)
			found[rt.Backend.Name] = rt.Backend
		}
		for _, rt := range rts {
			rt.Release()
		}
	}
	var out []*router.Backend
	for _, n := range names {
		b := found[n]
		if b == nil {
			t.Fatalf("no route reaches backend %s", n)
		}
		out = append(out, b)
	}
	return out
}

// --- Release and gauges ---

func TestRelease(t *testing.T) {
	r, m := newRouter(t, router.Config{})
	r.Update(snap("p", primary("p"), replica("r", 0)))
	sessions := m.BackendSessions.WithLabelValues("r")

	a := mustAcquire(t, r, router.RO)
	b := mustAcquire(t, r, router.RO)
	wantGauge(t, "sessions of r after two acquires", sessions, 2)

	a.Release()
	a.Release()
	a.Release()
	if n := a.Backend.Sessions(); n != 1 {
		t.Errorf("Sessions after releasing one route three times = %d, want 1", n)
	}
	wantGauge(t, "sessions of r after releasing one route three times", sessions, 1)

	b.Release()
	b.Release()
	if n := b.Backend.Sessions(); n != 0 {
		t.Errorf("Sessions after releasing both = %d, want 0", n)
	}
	wantGauge(t, "sessions of r after releasing both", sessions, 0)

	rw := mustAcquire(t, r, router.RW)
	wantGauge(t, "sessions of p", m.BackendSessions.WithLabelValues("p"), 1)
	rw.Release()
	rw.Release()
	wantGauge(t, "sessions of p after release", m.BackendSessions.WithLabelValues("p"), 0)
}

// A member whose address changes is a new backend; sessions released on the
// old address must not stay counted on the new one.
func TestAddrChangeSessionCount(t *testing.T) {
	r, m := newRouter(t, router.Config{})
	r.Update(snap("p", primary("p"), replica("r", 0)))
	old := mustAcquire(t, r, router.RO)

	r.Update(snap("p", primary("p"), withAddr(replica("r", 0), "r-new:5432")))
	if !revoked(old) {
		t.Fatalf("route on the old address not revoked")
	}
	old.Release()

	next := mustAcquire(t, r, router.RO)
	if next.Backend.Addr != "r-new:5432" {
		t.Fatalf("new route dials %s, want r-new:5432", next.Backend.Addr)
	}
	if n := next.Backend.Sessions(); n != 1 {
		t.Errorf("Sessions of r at its new address with one route open = %d, want 1", n)
	}
	wantGauge(t, "sessions gauge of r", m.BackendSessions.WithLabelValues("r"), 1)
	next.Release()
	if n := next.Backend.Sessions(); n != 0 {
		t.Errorf("Sessions of r after every route was released = %d, want 0", n)
	}
	wantGauge(t, "sessions gauge of r after every route was released", m.BackendSessions.WithLabelValues("r"), 0)
}

func TestBackendGauges(t *testing.T) {
	r, m := newRouter(t, router.Config{})
	role := func(name string, rl router.Role) prometheus.Collector {
		return m.BackendRole.WithLabelValues(name, string(rl))
	}
	steps := []struct {
		name     string
		snap     router.Snapshot
		rw       float64
		roCount  float64
		up       map[string]float64
		roles    map[string]router.Role
		lag      map[string]float64
		topology float64
	}{
		{
			name:    "primary and two replicas",
			snap:    snap("a", primary("a"), replica("b", 100), replica("c", 0)),
			rw:      1,
			roCount: 2,
			up:      map[string]float64{"a": 1, "b": 1, "c": 1},
			roles:   map[string]router.Role{"a": router.RolePrimary, "b": router.RoleReplica, "c": router.RoleReplica},
			lag:     map[string]float64{"b": 100, "c": 0},
		},
		{
			name:    "primary down, one replica down",
			snap:    snap("", router.Member{Name: "a", Addr: "a:5432", Role: router.RoleUnknown, LagBytes: -1}, unhealthy(replica("b", 100)), replica("c", 50)),
			rw:      0,
			roCount: 1,
			up:      map[string]float64{"a": 0, "b": 0, "c": 1},
			roles:   map[string]router.Role{"a": router.RoleUnknown, "b": router.RoleReplica, "c": router.RoleReplica},
			lag:     map[string]float64{"c": 50},
		},
		{
			name:    "b promoted",
			snap:    snap("b", unhealthy(router.Member{Name: "a", Addr: "a:5432", Role: router.RoleUnknown, LagBytes: -1}), primary("b"), replica("c", 0)),
			rw:      1,
			roCount: 1,
			up:      map[string]float64{"a": 0, "b": 1, "c": 1},
			roles:   map[string]router.Role{"a": router.RoleUnknown, "b": router.RolePrimary, "c": router.RoleReplica},
			lag:     map[string]float64{"c": 0},
		},
	}
	for _, st := range steps {
		r.Update(st.snap)
		wantGauge(t, st.name+": RWAvailable", m.RWAvailable, st.rw)
		wantGauge(t, st.name+": ROBackends", m.ROBackends, st.roCount)
		for name, up := range st.up {
			wantGauge(t, st.name+": BackendUp "+name, m.BackendUp.WithLabelValues(name), up)
		}
		for name, want := range st.roles {
			for _, rl := range []router.Role{router.RolePrimary, router.RoleReplica, router.RoleUnknown} {
				v := 0.0
				if rl == want {
					v = 1
				}
				wantGauge(t, st.name+": BackendRole "+name+" "+string(rl), role(name, rl), v)
			}
		}
		for name, lag := range st.lag {
			wantGauge(t, st.name+": BackendLag "+name, m.BackendLag.WithLabelValues(name), lag)
		}
	}
}

func TestChangedSignals(t *testing.T) {
	r, m := newRouter(t, router.Config{})
	s := snap("p", primary("p"), replica("r", 0))
	ch := r.Changed()
	r.Update(s)
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed by the first topology")
	}
	ch = r.Changed()
	before := gauge(t, m.TopologyChanges)
	r.Update(s)
	select {
	case <-ch:
		t.Error("Changed closed by an identical snapshot")
	default:
	}
	if got := gauge(t, m.TopologyChanges); got != before {
		t.Errorf("topology changes total moved from %v to %v on an identical snapshot", before, got)
	}
	r.Update(snap("p", primary("p"), unhealthy(replica("r", 0))))
	select {
	case <-ch:
	default:
		t.Error("Changed not closed when the ro set changed")
	}
}

// TestLeftMemberLosesItsSeries: every per-backend series of a member that
// left the topology is deleted, its health-check failures included (a
// dashboard would otherwise show a member that is gone, forever).
func TestLeftMemberLosesItsSeries(t *testing.T) {
	r, m := newRouter(t, router.Config{})
	r.Update(snap("a", primary("a"), replica("b", 0)))
	// What a health checker records for a member that fails its checks.
	m.HealthCheckError.WithLabelValues("a").Inc()
	m.HealthCheckError.WithLabelValues("b").Add(3)

	r.Update(snap("a", primary("a")))

	want := `
# HELP pharos_backend_health_check_failures_total Failed health checks, by backend.
# TYPE pharos_backend_health_check_failures_total counter
pharos_backend_health_check_failures_total{backend="a"} 1
`
	if err := testutil.CollectAndCompare(m.HealthCheckError, strings.NewReader(want)); err != nil {
		t.Errorf("health check failures after b left: %v", err)
	}
	for _, c := range []struct {
		name string
		c    prometheus.Collector
		want int // a's series: a primary has no lag, and three role series
	}{
		{"BackendUp", m.BackendUp, 1}, {"BackendSessions", m.BackendSessions, 1},
		{"BackendLag", m.BackendLag, 0}, {"BackendRole", m.BackendRole, 3},
	} {
		if n := testutil.CollectAndCount(c.c); n != c.want {
			t.Errorf("%s has %d series after b left, want %d (a's)", c.name, n, c.want)
		}
	}
}
