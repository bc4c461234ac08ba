package proxy

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestShowConfigMasksSecrets: SHOW CONFIG never shows auth_password, and
// says which keys RELOAD applies.
func TestShowConfigMasksSecrets(t *testing.T) {
	s := &Server{cfg: Config{RWListen: "127.0.0.1:1", AuthType: AuthSCRAM, AuthUser: "pharos_auth",
		AuthPassword: "very-secret-password", AdminUsers: []string{"a", "b"}}}
	s.cfg.Defaults()
	rows := map[string][]cell{}
	for _, r := range s.configRows() {
		for _, c := range r {
			if strings.Contains(c.s, "very-secret") {
				t.Fatalf("SHOW CONFIG row %v shows the password", r)
			}
		}
		rows[r[0].s] = r
	}
	if r := rows["auth_password"]; r[1].s != "********" {
		t.Fatalf("auth_password row %v", r)
	}
	if r := rows["admin_users"]; r[1].s != "a,b" {
		t.Fatalf("admin_users row %v", r)
	}
	if r := rows["route_wait"]; r[1].s != "5s" || r[2].s != "5s" || r[3].s != "no" {
		t.Fatalf("route_wait row %v", r)
	}
	for key, r := range rows {
		want := key == "tls_cert_file" || key == "tls_key_file" || key == "auth_file"
		if (r[3].s == "yes") != want {
			t.Errorf("%s changeable %s", key, r[3].s)
		}
	}
	s.cfg.AuthPassword = ""
	for _, r := range s.configRows() {
		if r[0].s == "auth_password" && r[1].s != "" {
			t.Fatalf("an empty auth_password shows as %q", r[1].s)
		}
	}
}

func TestStatsAverages(t *testing.T) {
	prev := dbTotals{assigned: 10, xacts: 100, queries: 200, received: 1000, sent: 5000,
		xactTime: time.Second, queryTime: time.Second, waitTime: 10 * time.Millisecond}
	now := dbTotals{assigned: 70, xacts: 700, queries: 1400, received: 61000, sent: 125000,
		xactTime: 4 * time.Second, queryTime: 2200 * time.Millisecond, waitTime: 130 * time.Millisecond}
	got := averages(now, prev, time.Minute)
	want := dbAverages{assigned: 1, xacts: 10, queries: 20, received: 1000, sent: 2000,
		xactTime: 5000, queryTime: 1000, waitTime: 2000}
	if got != want {
		t.Fatalf("averages = %+v, want %+v", got, want)
	}
	// Nothing happened: zeros, not a division by zero.
	if got := averages(prev, prev, time.Minute); got != (dbAverages{}) {
		t.Fatalf("idle period: %+v", got)
	}
}

// BenchmarkSample10kIdle is one sampler tick over 10,000 idle sessions
// (the idle-client count): it runs about ten times a second.
func BenchmarkSample10kIdle(b *testing.B) {
	s := &Server{sessions: make(map[*session]struct{}), retiredTotals: make(map[string]*dbTotals)}
	s.stats.times = make(map[string]*dbTotals)
	info := &clientInfo{user: "u", database: "app"}
	for range 10000 {
		sess := &session{srv: s}
		sess.info.Store(info)
		sess.attached.Store(true)
		sess.setAnswered(0, true)
		s.sessions[sess] = struct{}{}
	}
	s.stats.periodStart = time.Now()
	b.ReportAllocs()
	for b.Loop() {
		s.sample(time.Now(), sampleEvery)
	}
}

// TestReloadDropsAuthQueryCache: RELOAD (and SIGHUP) forget every cached
// auth_query answer, so each user is looked up again at its next login.
func TestReloadDropsAuthQueryCache(t *testing.T) {
	s := &Server{cfg: Config{TLSMode: TLSDisable}}
	q := &queryUsers{srv: s, ttl: time.Hour, now: time.Now, cache: make(map[string]cachedUser)}
	s.users = q
	s.log = slog.New(slog.DiscardHandler)
	q.store("alice", cachedUser{known: true, fetched: time.Now()})
	q.store("nobody", cachedUser{fetched: time.Now()})
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if len(q.cache) != 0 {
		t.Fatalf("cache after RELOAD: %v", q.cache)
	}
}

// TestSamplerPeriod: the sampler adds time to busy sessions only, and at
// the end of a stats period turns the totals' growth into averages.
func TestSamplerPeriod(t *testing.T) {
	s := &Server{sessions: make(map[*session]struct{}), retiredTotals: make(map[string]*dbTotals)}
	s.stats.times = make(map[string]*dbTotals)
	start := time.Unix(1000, 0)
	s.stats.periodStart = start
	newSess := func() *session {
		sess := &session{srv: s}
		sess.info.Store(&clientInfo{user: "u", database: "app"})
		sess.attached.Store(true)
		sess.setAnswered(0, true)
		s.sessions[sess] = struct{}{}
		return sess
	}
	newSess() // idle: adds no time
	busy, inTx := newSess(), newSess()
	busy.requests = 1          // a request in flight
	inTx.setAnswered(3, false) // answered, inside a transaction
	inTx.requests = 3
	inTx.xacts.Store(2)
	s.sample(start.Add(time.Second), 100*time.Millisecond)
	if tm := s.stats.times["app"]; tm.queryTime != 100*time.Millisecond || tm.xactTime != 200*time.Millisecond {
		t.Fatalf("after one sample: query %v, transaction %v", tm.queryTime, tm.xactTime)
	}
	if got := s.statsAverages(); len(got) != 0 {
		t.Fatalf("averages before the first period ended: %v", got)
	}
	s.sample(start.Add(statsPeriod), 100*time.Millisecond)
	a := s.statsAverages()["app"]
	// 3 queries and 2 transactions in 60 s round down to 0 per second;
	// their times are per query and per transaction.
	if a.queries != 0 || a.queryTime != 200000/3 || a.xactTime != 400000/2 {
		t.Fatalf("averages %+v", a)
	}
}
