package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// Pooling (pool_mode session). A pool is one (endpoint, backend, user,
// database); it owns the server connections opened for its clients. A
// server connection is handed only to a client whose normalised startup
// parameters (its signature) are the ones it was opened with, so a client
// sees exactly its own settings. When the client leaves at a clean point
// the connection is reset with ServerResetQuery and goes back idle;
// otherwise it is closed.
//
// Every pool of a server shares one mutex (pools.mu): what runs under it
// is a few slice and map steps, never I/O; connections are closed after
// it is released.
//
// Fencing: every route's revocation channel has one watcher goroutine
// (a fence) while pooled sessions or idle connections use it; when the
// channel closes the fence closes the idle connections opened under it and
// ends the pooled sessions routed by it. Idle connections count nothing in
// the router: its least-connections choice counts sessions (clients), each
// holding its route from login to its end whether it has a server
// connection yet or not, so the load it balances is the clients', not the
// pool's leftovers.

// poolKey names a pool.
type poolKey struct {
	ep       router.Endpoint
	backend  *router.Backend
	user     string
	database string
}

// dbKey names what MaxDBConnections bounds: one database on one backend.
type dbKey struct {
	backend  *router.Backend
	database string
}

// pools is a server's pooling state.
type pools struct {
	mu sync.Mutex
	// Guarded by mu.
	byKey  map[poolKey]*pool
	dbs    map[dbKey]*dbGroup
	fences map[<-chan struct{}]*fence
	// per endpoint, for the gauges
	conns, idle, clients, waiting [3]int
	stopped                       bool // the server drained: no fence starts, nothing goes back idle

	stop     chan struct{}  // closed when the server has drained
	watchers sync.WaitGroup // the fences' goroutines
}

// dbGroup is the pools of one database on one backend, with the FIFO of
// clients waiting for a server connection in any of them.
type dbGroup struct {
	key     dbKey
	conns   int // open or being opened, all pools
	pools   []*pool
	waiters []*waiter
}

// pool is one (endpoint, backend, user, database). Guarded by pools.mu.
type pool struct {
	key     poolKey
	db      *dbGroup
	conns   int           // open or being opened
	idle    []*serverConn // most recently used last
	servers map[*serverConn]struct{}
	clients int // pooled sessions routed here, waiting ones included
	waiting int
	// logins holds, per signature, what the server said at the last
	// successful login: a client with that signature is answered from it
	// at once and gets its server connection at its first message.
	logins    map[string]*loginState
	loggingIn map[string]chan struct{} // signatures with a first login under way, closed when it ends
	lastUsed  time.Time
	// For SHOW POOLS: the oldest current wait started at.
	waitSince []time.Time
}

// loginState is what a server says to a login, before its first
// ReadyForQuery, that a client of the same signature must be told too.
type loginState struct {
	negotiate []byte       // a NegotiateProtocolVersion message, or nil
	params    []wire.Param // ParameterStatus values, in the order sent
}

// waiter is a client waiting for a server connection.
type waiter struct {
	pool  *pool
	sig   string
	rev   <-chan struct{}
	since time.Time
	ready chan struct{} // closed once granted
	// Set under mu when granted: an idle connection, or nil for the right
	// to open one (already counted).
	granted bool
	sc      *serverConn
}

// fence watches one revocation channel.
type fence struct {
	route *router.Route // the first route seen with it, for its reason
}

func newPools() *pools {
	return &pools{
		byKey:  make(map[poolKey]*pool),
		dbs:    make(map[dbKey]*dbGroup),
		fences: make(map[<-chan struct{}]*fence),
		stop:   make(chan struct{}),
	}
}

// poolFor returns the pool of key, created if needed, counting one more
// client in it.
func (s *Server) joinPool(key poolKey) *pool {
	ps := s.pools
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p := ps.byKey[key]
	if p == nil {
		dk := dbKey{key.backend, key.database}
		g := ps.dbs[dk]
		if g == nil {
			g = &dbGroup{key: dk}
			ps.dbs[dk] = g
		}
		p = &pool{key: key, db: g, servers: make(map[*serverConn]struct{}), logins: make(map[string]*loginState),
			loggingIn: make(map[string]chan struct{})}
		g.pools = append(g.pools, p)
		ps.byKey[key] = p
	}
	p.clients++
	p.lastUsed = time.Now()
	ps.clients[key.ep]++
	s.publishLocked(key.ep)
	return p
}

// leavePool counts a client out of p.
func (s *Server) leavePool(p *pool) {
	ps := s.pools
	ps.mu.Lock()
	p.clients--
	p.lastUsed = time.Now()
	ps.clients[p.key.ep]--
	s.publishLocked(p.key.ep)
	ps.mu.Unlock()
}

// login returns the cached login of sig in p, or nil.
func (s *Server) login(p *pool, sig string) *loginState {
	s.pools.mu.Lock()
	defer s.pools.mu.Unlock()
	return p.logins[sig]
}

// claimLogin makes the caller the one client of p logging in with sig,
// or, when another one is, returns what closes when it is done. done
// must be called once the caller's login ended, whatever its outcome.
func (s *Server) claimLogin(p *pool, sig string) (wait <-chan struct{}, done func()) {
	s.pools.mu.Lock()
	defer s.pools.mu.Unlock()
	if ch, ok := p.loggingIn[sig]; ok {
		return ch, nil
	}
	ch := make(chan struct{})
	p.loggingIn[sig] = ch
	return nil, func() {
		s.pools.mu.Lock()
		delete(p.loggingIn, sig)
		s.pools.mu.Unlock()
		close(ch)
	}
}

// publishLocked sets the gauges of ep.
func (s *Server) publishLocked(ep router.Endpoint) {
	ps, m, e := s.pools, s.metrics, ep.String()
	m.PoolServers.WithLabelValues(e, metrics.PoolIdle).Set(float64(ps.idle[ep]))
	m.PoolServers.WithLabelValues(e, metrics.PoolActive).Set(float64(ps.conns[ep] - ps.idle[ep]))
	m.PoolClients.WithLabelValues(e, metrics.PoolWaiting).Set(float64(ps.waiting[ep]))
	m.PoolClients.WithLabelValues(e, metrics.PoolActive).Set(float64(ps.clients[ep] - ps.waiting[ep]))
}

func (s *Server) countPool(ep router.Endpoint, o metrics.PoolOutcome) {
	s.metrics.PoolServerConns.WithLabelValues(ep.String(), string(o)).Inc()
}

// errPoolTimeout is a wait past QueryWaitTimeout.
var errPoolTimeout = errors.New("query_wait_timeout")

// checkout returns a server connection of p opened with sig under rev: an
// idle one, checked first (never one whose socket is closed; one idle
// longer than ServerCheckDelay also answers an empty query), or, as nil,
// the right to open one, already counted in the limits (the caller must
// then call opened or openFailed). Over the limits it waits in the
// database's FIFO until ctx ends.
func (s *Server) checkout(ctx context.Context, p *pool, sig string, rev <-chan struct{}) (*serverConn, error) {
	ps := s.pools
	start := time.Now()
	for {
		var closing []*serverConn
		ps.mu.Lock()
		sc, open := s.grantLocked(p, sig, rev, &closing)
		var w *waiter
		if sc == nil && !open {
			w = &waiter{pool: p, sig: sig, rev: rev, since: time.Now(), ready: make(chan struct{})}
			p.db.waiters = append(p.db.waiters, w)
			p.waiting++
			p.waitSince = append(p.waitSince, w.since)
			ps.waiting[p.key.ep]++
			s.publishLocked(p.key.ep)
		}
		// What this grant dropped may serve those waiting (this one too).
		s.serveWaitersLocked(p.db, &closing)
		ps.mu.Unlock()
		s.closeServers(closing)
		if w != nil {
			var err error
			sc, open, err = s.await(ctx, w)
			if err != nil {
				s.metrics.PoolWait.Observe(time.Since(start).Seconds())
				return nil, err
			}
		}
		if open {
			s.metrics.PoolWait.Observe(time.Since(start).Seconds())
			return nil, nil
		}
		if s.usable(sc) {
			s.metrics.PoolWait.Observe(time.Since(start).Seconds())
			s.countPool(p.key.ep, metrics.PoolReused)
			return sc, nil
		}
		s.countPool(p.key.ep, metrics.PoolCheckFailed)
		s.closeServer(sc)
		if ctx.Err() != nil {
			return nil, errPoolTimeout
		}
	}
}

// await waits for w to be granted or ctx to end.
func (s *Server) await(ctx context.Context, w *waiter) (*serverConn, bool, error) {
	ps := s.pools
	select {
	case <-w.ready:
	case <-ctx.Done():
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p := w.pool
	p.waiting--
	if i := slices.Index(p.waitSince, w.since); i >= 0 {
		p.waitSince = slices.Delete(p.waitSince, i, i+1)
	}
	ps.waiting[p.key.ep]--
	s.publishLocked(p.key.ep)
	if w.granted {
		return w.sc, w.sc == nil, nil
	}
	if i := slices.Index(p.db.waiters, w); i >= 0 {
		p.db.waiters = slices.Delete(p.db.waiters, i, i+1)
	}
	return nil, false, errPoolTimeout
}

// grantLocked finds p a connection for sig (an idle one), or room to open
// one (reported by open, counted), evicting an idle connection of another
// signature when the limits are reached. Connections to close are added
// to closing.
func (s *Server) grantLocked(p *pool, sig string, rev <-chan struct{}, closing *[]*serverConn) (sc *serverConn, open bool) {
	now := time.Now()
	// Most recently used first: it is the likeliest to be warm, and the
	// least used ones age out by server_idle_timeout.
	for i := len(p.idle) - 1; i >= 0; i-- {
		c := p.idle[i]
		if c.sig != sig {
			continue
		}
		if c.rev != rev || closedChan(c.rev) {
			// Opened for a route since revoked; its fence closes it too.
			s.dropLocked(c, closing)
			s.countPool(p.key.ep, metrics.PoolFenced)
			continue
		}
		if now.Sub(c.created) >= s.cfg.ServerLifetime {
			s.dropLocked(c, closing)
			s.countPool(p.key.ep, metrics.PoolExpired)
			continue
		}
		s.takeIdleLocked(c)
		return c, false
	}
	if s.roomLocked(p) {
		s.reserveLocked(p)
		return nil, true
	}
	// Full: make room by closing the least recently used idle connection
	// of another signature, in the pool if pool_size is what is reached,
	// else anywhere in the database.
	var victim *serverConn
	if s.cfg.PoolSize > 0 && p.conns >= s.cfg.PoolSize {
		if len(p.idle) > 0 {
			victim = p.idle[0]
		}
	} else {
		for _, q := range p.db.pools {
			if len(q.idle) > 0 && (victim == nil || q.idle[0].idleSince.Before(victim.idleSince)) {
				victim = q.idle[0]
			}
		}
	}
	if victim != nil {
		s.dropLocked(victim, closing)
		if s.roomLocked(p) {
			s.reserveLocked(p)
			return nil, true
		}
	}
	return nil, false
}

func (s *Server) roomLocked(p *pool) bool {
	return (s.cfg.PoolSize == 0 || p.conns < s.cfg.PoolSize) &&
		(s.cfg.MaxDBConnections == 0 || p.db.conns < s.cfg.MaxDBConnections)
}

func (s *Server) reserveLocked(p *pool) {
	p.conns++
	p.db.conns++
	s.pools.conns[p.key.ep]++
	s.publishLocked(p.key.ep)
}

// unreserveLocked gives back a connection's place in the limits; the
// caller then lets the waiters use it (serveWaitersLocked), outside any
// grant in progress.
func (s *Server) unreserveLocked(p *pool) {
	p.conns--
	p.db.conns--
	s.pools.conns[p.key.ep]--
	s.publishLocked(p.key.ep)
}

// takeIdleLocked moves an idle connection to active.
func (s *Server) takeIdleLocked(c *serverConn) {
	p := c.pool
	i := slices.Index(p.idle, c)
	p.idle = slices.Delete(p.idle, i, i+1)
	s.pools.idle[p.key.ep]--
	c.state = serverActive
	c.requestTime = time.Now()
	p.lastUsed = c.requestTime
	s.publishLocked(p.key.ep)
}

// dropLocked forgets c (idle or not) and queues it to be closed.
func (s *Server) dropLocked(c *serverConn, closing *[]*serverConn) {
	p := c.pool
	if _, ok := p.servers[c]; !ok {
		return
	}
	delete(p.servers, c)
	if c.state == serverIdle {
		i := slices.Index(p.idle, c)
		p.idle = slices.Delete(p.idle, i, i+1)
		s.pools.idle[p.key.ep]--
	}
	c.state = serverClosed
	*closing = append(*closing, c)
	s.unreserveLocked(p)
}

// serveWaitersLocked grants what g can now give to its waiters, oldest
// first.
func (s *Server) serveWaitersLocked(g *dbGroup, closing *[]*serverConn) {
	for i := 0; i < len(g.waiters); {
		w := g.waiters[i]
		sc, open := s.grantLocked(w.pool, w.sig, w.rev, closing)
		if sc == nil && !open {
			i++
			continue
		}
		g.waiters = slices.Delete(g.waiters, i, i+1)
		w.granted, w.sc = true, sc
		close(w.ready)
	}
}

// opened adds a connection just logged in with the room checkout gave,
// as active, and caches its login for the signature.
func (s *Server) opened(sc *serverConn) {
	ps := s.pools
	ps.mu.Lock()
	p := sc.pool
	p.servers[sc] = struct{}{}
	sc.state = serverActive
	sc.requestTime = time.Now()
	p.logins[sc.sig] = &loginState{negotiate: sc.negotiate, params: slices.Clone(sc.params)}
	ps.mu.Unlock()
	s.countPool(p.key.ep, metrics.PoolOpened)
}

// openFailed gives back the room of a connection that could not be
// opened.
func (s *Server) openFailed(p *pool) {
	var closing []*serverConn
	s.pools.mu.Lock()
	s.unreserveLocked(p)
	s.serveWaitersLocked(p.db, &closing)
	s.pools.mu.Unlock()
	s.closeServers(closing)
}

// putIdle returns a reset connection to its pool, or to the first waiter
// that can take it; it is closed instead when the server has drained or
// its route is revoked.
func (s *Server) putIdle(sc *serverConn) {
	var closing []*serverConn
	ps := s.pools
	ps.mu.Lock()
	p := sc.pool
	switch {
	case sc.state == serverClosed:
		closing = append(closing, sc)
	case ps.stopped || closedChan(sc.rev):
		s.dropLocked(sc, &closing)
		s.serveWaitersLocked(p.db, &closing)
	default:
		sc.state = serverIdle
		sc.idleSince = time.Now()
		p.idle = append(p.idle, sc)
		ps.idle[p.key.ep]++
		p.lastUsed = sc.idleSince
		s.publishLocked(p.key.ep)
		s.watchFenceLocked(sc.rev, nil)
		s.serveWaitersLocked(p.db, &closing)
	}
	ps.mu.Unlock()
	s.closeServers(closing)
}

// discard closes a connection that must not be reused.
func (s *Server) discard(sc *serverConn, o metrics.PoolOutcome) {
	if o != "" {
		s.countPool(sc.pool.key.ep, o)
	}
	s.closeServer(sc)
}

// closeServer forgets sc and closes it.
func (s *Server) closeServer(sc *serverConn) {
	var closing []*serverConn
	s.pools.mu.Lock()
	s.dropLocked(sc, &closing)
	s.serveWaitersLocked(sc.pool.db, &closing)
	s.pools.mu.Unlock()
	if !slices.Contains(closing, sc) {
		// Already forgotten (fenced meanwhile): close it all the same.
		closing = append(closing, sc)
	}
	s.closeServers(closing)
}

func (s *Server) closeServers(cs []*serverConn) {
	for _, c := range cs {
		_ = c.conn.Close()
	}
}

// setServerState records what a connection a session holds is doing, for
// SHOW SERVERS.
func (s *Server) setServerState(sc *serverConn, st serverState) {
	s.pools.mu.Lock()
	if sc.state != serverClosed {
		sc.state = st
	}
	s.pools.mu.Unlock()
}

func closedChan(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// watchFence makes sure the revocation of route has a fence, and records
// it as sess's; the caller checks afterwards whether it is already
// revoked.
func (s *Server) watchFence(sess *session, route *router.Route) {
	s.mu.Lock()
	sess.fence = route.Revoked()
	s.mu.Unlock()
	s.pools.mu.Lock()
	s.watchFenceLocked(route.Revoked(), route)
	s.pools.mu.Unlock()
}

// watchFenceLocked starts the fence of rev unless it runs. route may be
// nil when rev comes from an idle connection, whose fence then already
// runs (it was started for the session that opened it) or has fired.
func (s *Server) watchFenceLocked(rev <-chan struct{}, route *router.Route) {
	ps := s.pools
	if ps.stopped || ps.fences[rev] != nil || route == nil {
		return
	}
	if closedChan(rev) {
		return
	}
	f := &fence{route: route}
	ps.fences[rev] = f
	ps.watchers.Go(func() {
		select {
		case <-rev:
		case <-ps.stop:
			return
		}
		s.fenced(rev, f)
	})
}

// fenced closes the idle connections opened under rev and ends the pooled
// sessions routed by it.
func (s *Server) fenced(rev <-chan struct{}, f *fence) {
	ps := s.pools
	var closing []*serverConn
	ps.mu.Lock()
	delete(ps.fences, rev)
	for _, p := range ps.byKey {
		for _, c := range slices.Clone(p.idle) {
			if c.rev == rev {
				s.dropLocked(c, &closing)
				s.countPool(p.key.ep, metrics.PoolFenced)
			}
		}
	}
	for _, g := range ps.dbs {
		s.serveWaitersLocked(g, &closing)
	}
	ps.mu.Unlock()
	s.closeServers(closing)
	rt := f.route
	msg := fmt.Sprintf("terminating connection because backend %s is no longer a valid target for the %s endpoint: %s",
		rt.Backend.Name, rt.Endpoint, rt.RevokedBecause())
	s.mu.Lock()
	for sess := range s.sessions {
		if sess.fence == rev {
			sess.end(metrics.ReasonFenced, wire.CodeAdminShutdown, msg)
		}
	}
	s.mu.Unlock()
	if len(closing) > 0 {
		s.log.Info("closed idle server connections of a fenced backend", "backend", rt.Backend.Name, "endpoint", rt.Endpoint, "closed", len(closing))
	}
}

// janitor closes idle connections past server_idle_timeout or
// server_lifetime and forgets pools nobody used for server_idle_timeout,
// until ctx ends.
func (s *Server) janitor(ctx context.Context) {
	every := min(s.cfg.ServerIdleTimeout, s.cfg.ServerLifetime) / 4
	every = max(min(every, 10*time.Second), 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.sweep(time.Now())
	}
}

func (s *Server) sweep(now time.Time) {
	ps := s.pools
	var closing []*serverConn
	ps.mu.Lock()
	for k, p := range ps.byKey {
		for _, c := range slices.Clone(p.idle) {
			if now.Sub(c.idleSince) >= s.cfg.ServerIdleTimeout || now.Sub(c.created) >= s.cfg.ServerLifetime {
				s.dropLocked(c, &closing)
				s.countPool(k.ep, metrics.PoolExpired)
			}
		}
		if p.conns == 0 && p.clients == 0 && now.Sub(p.lastUsed) >= s.cfg.ServerIdleTimeout {
			delete(ps.byKey, k)
			g := p.db
			g.pools = slices.DeleteFunc(g.pools, func(q *pool) bool { return q == p })
			if len(g.pools) == 0 {
				delete(ps.dbs, g.key)
			}
		}
	}
	for _, g := range ps.dbs {
		s.serveWaitersLocked(g, &closing)
	}
	ps.mu.Unlock()
	s.closeServers(closing)
}

// closeIdleServers closes the idle pooled connections of db ("" for
// all), for the console's KILL.
func (s *Server) closeIdleServers(db string) {
	ps := s.pools
	var closing []*serverConn
	ps.mu.Lock()
	for k, p := range ps.byKey {
		if db != "" && k.database != db {
			continue
		}
		for _, c := range slices.Clone(p.idle) {
			s.dropLocked(c, &closing)
		}
	}
	for _, g := range ps.dbs {
		s.serveWaitersLocked(g, &closing)
	}
	ps.mu.Unlock()
	s.closeServers(closing)
}

// stopPools runs once every session has ended: it closes the idle
// connections and stops the fences.
func (s *Server) stopPools() {
	ps := s.pools
	var closing []*serverConn
	ps.mu.Lock()
	if !ps.stopped {
		ps.stopped = true
		close(ps.stop)
	}
	for _, p := range ps.byKey {
		for _, c := range slices.Clone(p.idle) {
			s.dropLocked(c, &closing)
		}
	}
	ps.mu.Unlock()
	s.closeServers(closing)
	ps.watchers.Wait()
}

// poolSignature normalises the startup parameters a server connection is
// opened with: the same set with the same values, whatever the order, the
// letter case of setting names (the server ignores it) or a repeated name
// (the last one counts, as in the server), with the database defaulting
// to the user as in the server. The protocol version is part of it.
func poolSignature(version uint32, params []wire.Param) string {
	kv := make(map[string]string, len(params)+1)
	for _, p := range params {
		name := p.Name
		switch {
		case name == "user", name == "database", name == "options", name == "replication",
			strings.HasPrefix(name, "_pq_."):
		default:
			name = strings.ToLower(name)
		}
		kv[name] = p.Value
	}
	if _, ok := kv["database"]; !ok {
		kv["database"] = kv["user"]
	}
	names := make([]string, 0, len(kv))
	for n := range kv {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	fmt.Fprintf(&b, "%d", version)
	for _, n := range names {
		b.WriteByte(0)
		b.WriteString(n)
		b.WriteByte(0)
		b.WriteString(kv[n])
	}
	return b.String()
}

// poolable reports whether a session with these startup parameters may
// use a pool: a replication connection may not.
func poolable(params []wire.Param) bool {
	return !slices.ContainsFunc(params, func(p wire.Param) bool { return p.Name == "replication" })
}

// PoolStats is one pool, with PgBouncer's SHOW POOLS concepts.
type PoolStats struct {
	Database    string
	User        string
	Endpoint    string // rw or ro
	Backend     string // member name
	BackendAddr string
	ClActive    int           // clients logged in and not waiting
	ClWaiting   int           // clients waiting for a server connection
	SvActive    int           // server connections used by a client
	SvIdle      int           // idle, reusable at once
	SvUsed      int           // idle longer than server_check_delay: checked before reuse
	SvTested    int           // being reset or checked
	SvLogin     int           // logging in
	MaxWait     time.Duration // the longest current wait
	PoolMode    string
}

// ServerConnInfo is one pooled server connection, with PgBouncer's SHOW
// SERVERS concepts.
type ServerConnInfo struct {
	Type        string // always "S"
	User        string
	Database    string
	Endpoint    string
	Backend     string
	State       string // active, idle, used, tested, login
	Addr        string
	Port        string
	ConnectTime time.Time
	RequestTime time.Time
	RemotePID   int
	conn        *serverConn // for the console to find its client and socket
}

// poolStats returns a snapshot of the pools, sorted by database, user,
// endpoint and backend.
func (s *Server) poolStats() []PoolStats {
	ps := s.pools
	now := time.Now()
	ps.mu.Lock()
	out := make([]PoolStats, 0, len(ps.byKey))
	for k, p := range ps.byKey {
		st := PoolStats{Database: k.database, User: k.user, Endpoint: k.ep.String(), Backend: k.backend.Name,
			BackendAddr: k.backend.Addr, ClWaiting: p.waiting, ClActive: p.clients - p.waiting, PoolMode: string(s.cfg.PoolMode)}
		for c := range p.servers {
			switch c.state {
			case serverActive:
				st.SvActive++
			case serverIdle:
				if now.Sub(c.idleSince) > s.cfg.ServerCheckDelay {
					st.SvUsed++
				} else {
					st.SvIdle++
				}
			case serverTested:
				st.SvTested++
			}
		}
		st.SvLogin = p.conns - len(p.servers)
		if len(p.waitSince) > 0 {
			st.MaxWait = now.Sub(slices.MinFunc(p.waitSince, func(a, b time.Time) int { return a.Compare(b) }))
		}
		out = append(out, st)
	}
	ps.mu.Unlock()
	slices.SortFunc(out, func(a, b PoolStats) int {
		return strings.Compare(a.Database+"\x00"+a.User+"\x00"+a.Endpoint+"\x00"+a.Backend,
			b.Database+"\x00"+b.User+"\x00"+b.Endpoint+"\x00"+b.Backend)
	})
	return out
}

// serverConns returns a snapshot of the pooled server connections that
// are logged in, oldest first.
func (s *Server) serverConns() []ServerConnInfo {
	ps := s.pools
	now := time.Now()
	ps.mu.Lock()
	var out []ServerConnInfo
	for k, p := range ps.byKey {
		for c := range p.servers {
			state := c.state.String()
			if c.state == serverIdle && now.Sub(c.idleSince) > s.cfg.ServerCheckDelay {
				state = "used"
			}
			host, port, _ := net.SplitHostPort(k.backend.Addr)
			out = append(out, ServerConnInfo{Type: "S", User: k.user, Database: k.database, Endpoint: k.ep.String(),
				Backend: k.backend.Name, State: state, Addr: host, Port: port, ConnectTime: c.created,
				RequestTime: c.requestTime, RemotePID: int(c.pid), conn: c})
		}
	}
	ps.mu.Unlock()
	slices.SortFunc(out, func(a, b ServerConnInfo) int { return a.ConnectTime.Compare(b.ConnectTime) })
	return out
}
