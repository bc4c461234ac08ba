// Package router owns the live topology as the proxy sees it and the choice
// of a backend per endpoint: rw goes to the one primary a source vouches for,
// ro spreads sessions over eligible replicas by least connections. It also
// owns the topology sources that feed it: Static (a host list with health
// checks) and Etcd (one watch on a cluster's keys, read through a Format:
// pharos's own layout or Patroni's), which may add health checks that only
// exclude.
//
// It hands out Routes; a Route is revoked (its channel closed) when its
// backend stops being a valid target for the endpoint, which is how the proxy
// learns to fence sessions: rw routes when the rw target changes, ro routes
// when their replica leaves, fails or stops being a replica (is promoted),
// the last unless ROFallbackToPrimary allows ro on a primary. The router must not know client sessions, wire
// protocol or how PostgreSQL is controlled.
//
// Its Go API carries no stability promise: pharos ships a binary, and
// these packages change with it.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/pharos-ha/pharos/metrics"
)

// Endpoint is one of the proxy's two listeners.
type Endpoint uint8

const (
	RW Endpoint = iota + 1 // read-write: the current primary only
	RO                     // read-only: healthy replicas, optionally the primary
)

func (e Endpoint) String() string {
	switch e {
	case RW:
		return metrics.EndpointRW
	case RO:
		return metrics.EndpointRO
	}
	return fmt.Sprintf("Endpoint(%d)", uint8(e))
}

// Role of a member as its source reports it.
type Role string

const (
	RolePrimary Role = "primary"
	RoleReplica Role = "replica"
	RoleUnknown Role = "unknown"
)

// Member is one PostgreSQL server in a topology snapshot.
type Member struct {
	Name string // unique within the cluster
	Addr string // host:port the proxy dials
	Role Role
	// Healthy is false when health checks (or the source) exclude it.
	Healthy bool
	// LagBytes is the replay lag behind the primary; negative when unknown.
	LagBytes      int64
	NoLoadBalance bool
}

// Snapshot is a complete view of the cluster from a source. Sources send
// whole snapshots, never deltas, so a lost update cannot leave the router
// half-informed.
type Snapshot struct {
	Members []Member
	// Primary names the member the source vouches for as the rw target, or
	// is empty while there is none. It must name a member with RolePrimary.
	Primary string
	// Conflict lists members that all claim to be writable. Non-empty means
	// split-brain: rw is refused while it lasts.
	Conflict []string
	// Ignored counts the records the source left out; the router does not
	// read it, the source exports it.
	Ignored Ignored
}

// Ignored counts a source's unusable records by reason.
type Ignored struct {
	// Unleased leader and member records are not attached to a lease.
	Unleased int
	// Invalid records do not parse or validate.
	Invalid int
}

// Config tunes routing. The zero value routes ro only to replicas with any
// lag.
type Config struct {
	// MaxLagBytes excludes replicas lagging more than this from ro; 0 means
	// no limit. A replica whose lag is unknown is kept.
	MaxLagBytes int64
	// ROFallbackToPrimary lets ro use the primary when no replica is
	// eligible.
	ROFallbackToPrimary bool
}

// ErrNoRoute is returned by Acquire when no backend became available before
// the context ended.
var ErrNoRoute = errors.New("no backend available")

// Router is safe for concurrent use.
type Router struct {
	// Static after construction.
	cfg     Config
	log     *slog.Logger
	metrics *metrics.Proxy

	mu sync.Mutex
	// Guarded by mu.
	backends map[string]*Backend      // by member name, kept while listed
	rw       *target                  // nil while rw has no target
	ro       []*target                // eligible for ro
	roRevoke map[*Backend]*revocation // per backend with ro routes, revoked when it goes, fails or is promoted
	roFromRW bool                     // ro currently falls back to the primary
	changed  chan struct{}            // closed and replaced on every routing change
	rrNext   int                      // tie-breaker rotation for least connections
	conflict bool
}

// Backend is a PostgreSQL server the proxy may dial. Pointers are stable for
// as long as the member stays in the topology.
type Backend struct {
	Name string
	Addr string

	sessions atomic.Int64
}

// Sessions returns the number of routes to this backend not yet released.
func (b *Backend) Sessions() int64 { return b.sessions.Load() }

// target is a backend in one endpoint's set; revoked when it leaves.
type target struct {
	backend *Backend
	revoked *revocation
}

// revocation ends the routes that share it: why is written, under the
// router's mu, before ch is closed, and read only after.
type revocation struct {
	ch  chan struct{}
	why string
}

func newRevocation() *revocation { return &revocation{ch: make(chan struct{})} }

func (rv *revocation) revoke(why string) {
	rv.why = why
	close(rv.ch)
}

// Route is one session's claim on a backend.
type Route struct {
	Backend  *Backend
	Endpoint Endpoint
	revoked  *revocation
	released atomic.Bool
	r        *Router
}

// Revoked is closed when the backend stops being a valid target for the
// route's endpoint: the rw target changed or vanished; an ro backend was
// found unhealthy, left the cluster, or is no longer a replica (promoted)
// while ROFallbackToPrimary is off.
func (rt *Route) Revoked() <-chan struct{} { return rt.revoked.ch }

// RevokedBecause says why the route was revoked, in a few words that
// complete "backend n2 is no longer a valid target: …". Call it only once
// Revoked is closed.
func (rt *Route) RevokedBecause() string { return rt.revoked.why }

// Release gives the route back; it is safe to call more than once.
func (rt *Route) Release() {
	if rt.released.CompareAndSwap(false, true) {
		rt.r.mu.Lock()
		rt.Backend.sessions.Add(-1)
		rt.r.setSessionsGaugeLocked(rt.Backend)
		rt.r.mu.Unlock()
	}
}

// New returns a router with an empty topology: every Acquire waits until a
// source calls Update.
func New(cfg Config, log *slog.Logger, m *metrics.Proxy) *Router {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Router{
		cfg:      cfg,
		log:      log,
		metrics:  m,
		backends: make(map[string]*Backend),
		roRevoke: make(map[*Backend]*revocation),
		changed:  make(chan struct{}),
	}
}

// Update installs a new snapshot and revokes routes whose backend is no
// longer a valid target.
func (r *Router) Update(s Snapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()

	seen := make(map[string]bool, len(s.Members))
	for _, m := range s.Members {
		seen[m.Name] = true
		b := r.backends[m.Name]
		if b == nil || b.Addr != m.Addr {
			// A moved member is a new backend: routes to the old address
			// are revoked below and release into the old object.
			b = &Backend{Name: m.Name, Addr: m.Addr}
			r.backends[m.Name] = b
			r.metrics.BackendSessions.WithLabelValues(m.Name).Set(0)
		}
	}
	for name := range r.backends {
		if !seen[name] {
			delete(r.backends, name)
			r.deleteMemberMetrics(name)
		}
	}

	conflict := len(s.Conflict) > 1
	if conflict && !r.conflict {
		r.metrics.SplitBrain.Inc()
		r.log.Error("split-brain: more than one writable backend, refusing rw", "members", s.Conflict)
	}
	r.conflict = conflict

	var newRW *Backend
	if !conflict && s.Primary != "" {
		if i := slices.IndexFunc(s.Members, func(m Member) bool { return m.Name == s.Primary }); i >= 0 {
			if m := s.Members[i]; m.Role == RolePrimary && m.Healthy {
				newRW = r.backends[m.Name]
			}
		}
	}
	changed := false
	if r.rw == nil || newRW == nil || r.rw.backend != newRW {
		if r.rw != nil || newRW != nil {
			changed = true
			old := "none"
			newName := "none"
			if newRW != nil {
				newName = newRW.Name
			}
			if r.rw != nil {
				old = r.rw.backend.Name
				why := "the primary is now " + newName
				if conflict {
					why = "more than one backend is writable (split-brain)"
				} else if newRW == nil {
					why = "no backend is the primary now"
				}
				r.rw.revoked.revoke(why)
			}
			r.rw = nil
			if newRW != nil {
				r.rw = &target{backend: newRW, revoked: newRevocation()}
			}
			r.log.Info("rw target changed", "from", old, "to", newName)
		}
	}

	var eligible []*Backend
	for _, m := range s.Members {
		if m.Role != RoleReplica || !m.Healthy || m.NoLoadBalance {
			continue
		}
		if r.cfg.MaxLagBytes > 0 && m.LagBytes > r.cfg.MaxLagBytes {
			continue
		}
		eligible = append(eligible, r.backends[m.Name])
	}
	// Lag or noloadbalance only stop new ro sessions; a replica that is
	// gone, moved, unhealthy or no longer a replica also loses the ones it
	// has, including those it kept through an earlier exclusion. So the
	// revocation lives with the backend, not with its current place in the
	// ro set.
	for b, rv := range r.roRevoke {
		if why := r.roInvalidLocked(b, s); why != "" {
			rv.revoke(why)
			delete(r.roRevoke, b)
		}
	}
	ro := make([]*target, 0, len(eligible))
	for _, b := range eligible {
		rv := r.roRevoke[b]
		if rv == nil {
			rv = newRevocation()
			r.roRevoke[b] = rv
		}
		ro = append(ro, &target{backend: b, revoked: rv})
	}
	if !slices.EqualFunc(ro, r.ro, func(a, b *target) bool { return a.backend == b.backend }) {
		changed = true
	}
	r.ro = ro
	r.roFromRW = len(ro) == 0 && r.cfg.ROFallbackToPrimary && r.rw != nil

	for _, m := range s.Members {
		up := 0.0
		if m.Healthy {
			up = 1
		}
		r.metrics.BackendUp.WithLabelValues(m.Name).Set(up)
		for _, role := range []Role{RolePrimary, RoleReplica, RoleUnknown} {
			v := 0.0
			if m.Role == role {
				v = 1
			}
			r.metrics.BackendRole.WithLabelValues(m.Name, string(role)).Set(v)
		}
		if m.LagBytes >= 0 {
			r.metrics.BackendLag.WithLabelValues(m.Name).Set(float64(m.LagBytes))
		} else {
			r.metrics.BackendLag.DeleteLabelValues(m.Name)
		}
	}
	if r.rw != nil {
		r.metrics.RWAvailable.Set(1)
	} else {
		r.metrics.RWAvailable.Set(0)
	}
	r.metrics.ROBackends.Set(float64(len(r.ro)))
	if changed {
		r.metrics.TopologyChanges.Inc()
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

// roInvalidLocked says why b's ro sessions must end under snapshot s, or
// "" when they may go on. A replica that is promoted (the source reports
// it primary, or no longer a replica) is writable: the ro endpoint
// promises read-only sessions, so they end unless ROFallbackToPrimary lets
// ro use a primary.
func (r *Router) roInvalidLocked(b *Backend, s Snapshot) string {
	if r.backends[b.Name] != b {
		return "it left the topology or moved"
	}
	i := slices.IndexFunc(s.Members, func(m Member) bool { return m.Name == b.Name })
	m := s.Members[i] // present: r.backends holds only listed members
	switch {
	case !m.Healthy:
		return "it is unhealthy"
	case m.Role == RoleReplica:
		return ""
	case m.Role == RolePrimary && r.cfg.ROFallbackToPrimary:
		return ""
	case m.Role == RolePrimary:
		return "it was promoted to primary, and ro_fallback_to_primary is off"
	}
	return "it is no longer a replica (role " + string(m.Role) + ")"
}

func (r *Router) deleteMemberMetrics(name string) {
	r.metrics.BackendUp.DeleteLabelValues(name)
	for _, role := range []Role{RolePrimary, RoleReplica, RoleUnknown} {
		r.metrics.BackendRole.DeleteLabelValues(name, string(role))
	}
	r.metrics.BackendLag.DeleteLabelValues(name)
	r.metrics.BackendSessions.DeleteLabelValues(name)
	r.metrics.HealthCheckError.DeleteLabelValues(name)
}

// setSessionsGaugeLocked publishes b's session count if b is still the
// member's current backend (a moved member's old object must not
// overwrite the new one's figure).
func (r *Router) setSessionsGaugeLocked(b *Backend) {
	if r.backends[b.Name] == b {
		r.metrics.BackendSessions.WithLabelValues(b.Name).Set(float64(b.sessions.Load()))
	}
}

// Acquire picks a backend for ep, waiting for one until ctx ends. The caller
// must Release the route.
func (r *Router) Acquire(ctx context.Context, ep Endpoint) (*Route, error) {
	return r.AcquireExcept(ctx, ep, nil)
}

// AcquireExcept is Acquire that skips the backends in exclude (ones the
// caller just failed to reach), unless nothing else is available: then it
// returns an excluded one at once, so the caller can give up instead of
// waiting for a change that may never come.
func (r *Router) AcquireExcept(ctx context.Context, ep Endpoint, exclude []*Backend) (*Route, error) {
	for {
		r.mu.Lock()
		t := r.pickLocked(ep, exclude)
		if t == nil && len(exclude) > 0 {
			t = r.pickLocked(ep, nil)
		}
		changed := r.changed
		if t != nil {
			t.backend.sessions.Add(1)
			r.setSessionsGaugeLocked(t.backend)
			r.mu.Unlock()
			return &Route{Backend: t.backend, Endpoint: ep, revoked: t.revoked, r: r}, nil
		}
		r.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w", ep, ErrNoRoute)
		}
	}
}

func (r *Router) pickLocked(ep Endpoint, exclude []*Backend) *target {
	switch ep {
	case RW:
		if r.rw == nil || slices.Contains(exclude, r.rw.backend) {
			return nil
		}
		return r.rw
	case RO:
		if r.roFromRW && r.rw != nil {
			return r.rw
		}
		var best *target
		bestN := int64(math.MaxInt64)
		n := len(r.ro)
		for i := range n {
			// Start at a rotating offset so ties spread evenly.
			t := r.ro[(r.rrNext+i)%n]
			if slices.Contains(exclude, t.backend) {
				continue
			}
			if s := t.backend.sessions.Load(); s < bestN {
				best, bestN = t, s
			}
		}
		r.rrNext++
		if best == nil && r.cfg.ROFallbackToPrimary && r.rw != nil && !slices.Contains(exclude, r.rw.backend) {
			return r.rw
		}
		return best
	}
	return nil
}

// Current returns the names of the rw target ("" when none) and of the ro
// set, for status output and tests.
func (r *Router) Current() (rw string, ro []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rw != nil {
		rw = r.rw.backend.Name
	}
	for _, t := range r.ro {
		ro = append(ro, t.backend.Name)
	}
	return rw, ro
}

// Changed returns a channel closed at the next routing change.
func (r *Router) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}
