package proxy

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// SHOW STATS' numbers, kept without adding work to the relay's per-message
// path:
//   - queries and transactions are the ReadyForQuery messages the session's
//     server side already counts (all of them, and those saying idle);
//   - bytes are the kernel's counts for the client's socket (TCP_INFO),
//     read when asked and when the session ends;
//   - wait time is measured once per session, from the end of the client's
//     authentication to its first ReadyForQuery;
//   - time in queries and in transactions is sampled: about every
//     sampleEvery, at a jittered instant, the sampler adds the time since
//     its last look to every session that has a request in flight (query
//     time) or is in a transaction or has a request in flight (transaction
//     time). The sums are unbiased estimates, exact on average over many
//     samples, not per query.
// Sessions' counts move to per-database totals when they end.

// statsPeriod is PgBouncer's default stats_period: SHOW STATS' averages are
// over the last full one.
const statsPeriod = 60 * time.Second

// sampleEvery is the sampler's mean interval.
const sampleEvery = 100 * time.Millisecond

// dbTotals are one database's totals since the proxy started.
type dbTotals struct {
	assigned, xacts, queries, received, sent uint64
	xactTime, queryTime, waitTime            time.Duration
}

func (t *dbTotals) add(o dbTotals) {
	t.assigned += o.assigned
	t.xacts += o.xacts
	t.queries += o.queries
	t.received += o.received
	t.sent += o.sent
	t.xactTime += o.xactTime
	t.queryTime += o.queryTime
	t.waitTime += o.waitTime
}

// dbAverages are per second over a stats period, except the times, which
// are per transaction, query and server assignment, in microseconds.
type dbAverages struct {
	assigned, xacts, queries, received, sent uint64
	xactTime, queryTime, waitTime            uint64
}

func averages(now, prev dbTotals, period time.Duration) dbAverages {
	per := func(n, p uint64) uint64 {
		if n < p {
			return 0
		}
		return uint64(float64(n-p) / period.Seconds())
	}
	each := func(d, pd time.Duration, n, p uint64) uint64 {
		if n <= p || d < pd {
			return 0
		}
		return uint64((d - pd).Microseconds()) / (n - p)
	}
	return dbAverages{
		assigned:  per(now.assigned, prev.assigned),
		xacts:     per(now.xacts, prev.xacts),
		queries:   per(now.queries, prev.queries),
		received:  per(now.received, prev.received),
		sent:      per(now.sent, prev.sent),
		xactTime:  each(now.xactTime, prev.xactTime, now.xacts, prev.xacts),
		queryTime: each(now.queryTime, prev.queryTime, now.queries, prev.queries),
		waitTime:  each(now.waitTime, prev.waitTime, now.assigned, prev.assigned),
	}
}

// sessionSample is what the sampler last saw of a session.
type sessionSample struct {
	requests  uint64    // the client's sync points
	requestAt time.Time // when they last changed, as far as the sampler saw
}

// statsBook holds the sampled times and the averages.
type statsBook struct {
	// Guarded by srv.stats.mu (the session's sample too).
	times       map[string]*dbTotals // only the time fields are used
	prev        map[string]dbTotals  // totals when the current period began
	avg         map[string]dbAverages
	periodStart time.Time
}

// markAssigned records how long the session waited for its server
// connection, when it gets one; it is then no longer waiting.
func (sess *session) markAssigned() {
	if w := sess.waitingSince.Swap(0); w != 0 {
		sess.waited.Store(max(time.Now().UnixNano()-w, 0) + 1)
	}
}

// counts are the session's own contribution to its database's totals.
func (sess *session) counts() dbTotals {
	t := dbTotals{queries: sess.answered.Load() >> 1, xacts: sess.xacts.Load()}
	if w := sess.waited.Load(); w > 0 {
		t.assigned = 1
		t.waitTime = time.Duration(w - 1)
	}
	sess.connMu.Lock()
	c := sess.client
	sess.connMu.Unlock()
	t.received, t.sent = socketBytes(c)
	return t
}

// counted says whether a session counts in SHOW STATS: an ordinary
// session that has had its server.
func (sess *session) counted() bool {
	info := sess.info.Load()
	return info != nil && !info.console && sess.attached.Load()
}

// retire moves an ending session's counts to its database's totals. The
// run goroutine calls it once the copiers are done, before closing.
func (s *Server) retire(sess *session) {
	if !sess.counted() {
		return
	}
	c := sess.counts()
	db := sess.info.Load().database
	s.mu.Lock()
	defer s.mu.Unlock()
	sess.retired = true
	t := s.retiredTotals[db]
	if t == nil {
		t = new(dbTotals)
		s.retiredTotals[db] = t
	}
	t.add(c)
}

// liveSessions returns the sessions that count in SHOW STATS and have not
// retired, with the retired totals as of the same instant.
func (s *Server) liveSessions() ([]*session, map[string]dbTotals) {
	s.mu.Lock()
	defer s.mu.Unlock()
	retired := make(map[string]dbTotals, len(s.retiredTotals))
	for db, t := range s.retiredTotals {
		retired[db] = *t
	}
	live := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		if !sess.retired && sess.counted() {
			live = append(live, sess)
		}
	}
	return live, retired
}

// statsTotals returns every database's totals now.
func (s *Server) statsTotals() map[string]dbTotals {
	live, out := s.liveSessions()
	for _, sess := range live {
		db := sess.info.Load().database
		t := out[db]
		t.add(sess.counts())
		out[db] = t
	}
	s.stats.mu.Lock()
	for db, tm := range s.stats.times {
		t := out[db]
		t.xactTime, t.queryTime = tm.xactTime, tm.queryTime
		out[db] = t
	}
	s.stats.mu.Unlock()
	return out
}

// statsAverages returns the averages of the last full stats period (none
// before the first one ends).
func (s *Server) statsAverages() map[string]dbAverages {
	s.stats.mu.Lock()
	defer s.stats.mu.Unlock()
	out := make(map[string]dbAverages, len(s.stats.avg))
	for db, a := range s.stats.avg {
		out[db] = a
	}
	return out
}

// runSampler samples the sessions until ctx ends; Serve owns it.
func (s *Server) runSampler(ctx context.Context) {
	last := time.Now()
	s.stats.mu.Lock()
	s.stats.periodStart = last
	s.stats.mu.Unlock()
	timer := time.NewTimer(sampleEvery)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		now := time.Now()
		s.sample(now, now.Sub(last))
		last = now
		// Jittered, so that a workload with a period of its own is not
		// always seen in the same phase.
		timer.Reset(sampleEvery/2 + rand.N(sampleEvery))
	}
}

// sample adds dt to the query and transaction times of the sessions busy
// now, and closes the stats period when it is over.
func (s *Server) sample(now time.Time, dt time.Duration) {
	live, _ := s.liveSessions()
	s.stats.mu.Lock()
	for _, sess := range live {
		a := sess.answered.Load()
		sess.drainMu.Lock()
		req := sess.requests
		sess.drainMu.Unlock()
		if req != sess.sample.requests {
			sess.sample.requests, sess.sample.requestAt = req, now
		}
		busy := req != a>>1
		if !busy && a&1 == 1 {
			continue
		}
		db := sess.info.Load().database
		t := s.stats.times[db]
		if t == nil {
			t = new(dbTotals)
			s.stats.times[db] = t
		}
		t.xactTime += dt
		if busy {
			t.queryTime += dt
		}
	}
	over := now.Sub(s.stats.periodStart) >= statsPeriod
	s.stats.mu.Unlock()
	if !over {
		return
	}
	tot := s.statsTotals()
	s.stats.mu.Lock()
	defer s.stats.mu.Unlock()
	period := now.Sub(s.stats.periodStart)
	avg := make(map[string]dbAverages, len(tot))
	for db, t := range tot {
		avg[db] = averages(t, s.stats.prev[db], period)
	}
	s.stats.avg, s.stats.prev, s.stats.periodStart = avg, tot, now
}

// socketBytes returns what the kernel counted for c's TCP socket: bytes
// received, and bytes sent and acknowledged (TLS records included); zeros
// when c is closed or not TCP.
func socketBytes(c net.Conn) (received, sent uint64) {
	for {
		switch t := c.(type) {
		case *tls.Conn:
			c = t.NetConn()
			continue
		case *prefixConn:
			c = t.Conn
			continue
		case *net.TCPConn:
			rc, err := t.SyscallConn()
			if err != nil {
				return 0, 0
			}
			_ = rc.Control(func(fd uintptr) {
				info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
				if err == nil {
					received, sent = info.Bytes_received, info.Bytes_acked
				}
			})
			return received, sent
		}
		return 0, 0
	}
}
