package cluster

import (
	"slices"
	"testing"
	"time"
)

func lagOf(n int64) *int64 { return &n }

// replicaOf is a healthy replica of leader: streaming, no lag.
func replicaOf(name, leader string) *Member {
	return &Member{Name: name, Role: RoleReplica, State: "streaming from " + leader, Upstream: leader, Streaming: true, Host: "127.0.0.1", Port: 5432, LagBytes: lagOf(0)}
}

func TestCheckTakeover(t *testing.T) {
	const fresh = time.Second
	rule := TakeoverRule{Leader: "n1", StaleAfter: 3 * time.Second, MaxLag: 1 << 20}
	with := func(f func(*TakeoverRule)) TakeoverRule { r := rule; f(&r); return r }
	edit := func(m *Member, f func(*Member)) *Member { f(m); return m }
	for _, tc := range []struct {
		name string
		c    Candidate
		r    TakeoverRule
		want Unfitness
		says string
	}{
		{"a healthy replica", Candidate{"n2", replicaOf("n2", "n1"), fresh}, rule, Fit, ""},
		{"the leader itself", Candidate{"n1", replicaOf("n1", "n1"), fresh}, rule, UnfitLeads, "n1 already leads"},
		{"no record", Candidate{"n2", nil, fresh}, rule, UnfitNoRecord, "n2 has no member record"},
		{"a stale record", Candidate{"n2", replicaOf("n2", "n1"), 4 * time.Second}, rule, UnfitStale, "n2's record is stale"},
		{"exactly StaleAfter old still counts", Candidate{"n2", replicaOf("n2", "n1"), 3 * time.Second}, rule, Fit, ""},
		{"streaming from another member", Candidate{"n2", replicaOf("n2", "n3"), fresh}, rule, UnfitNotStreaming, "n2 is not streaming from n1 (replica, streaming from n3)"},
		{"connecting, not streaming", Candidate{"n2", edit(replicaOf("n2", "n1"), func(m *Member) { m.State, m.Streaming = "connecting to n1", false }), fresh}, rule, UnfitNotStreaming, "n2 is not streaming from n1 (replica, connecting to n1)"},
		{"starting", Candidate{"n2", edit(replicaOf("n2", "n1"), func(m *Member) { m.Role, m.State = RoleStarting, "cloning" }), fresh}, rule, UnfitNotStreaming, "n2 is not streaming from n1 (starting, cloning)"},
		{"lagging beyond the limit", Candidate{"n2", edit(replicaOf("n2", "n1"), func(m *Member) { m.LagBytes = lagOf(2 << 20) }), fresh}, rule, UnfitLagging, "n2 lags 2097152 bytes (maximum_lag_on_failover 1048576)"},
		{"lagging at the limit", Candidate{"n2", edit(replicaOf("n2", "n1"), func(m *Member) { m.LagBytes = lagOf(1 << 20) }), fresh}, rule, Fit, ""},
		{"lagging without a limit", Candidate{"n2", edit(replicaOf("n2", "n1"), func(m *Member) { m.LagBytes = lagOf(1 << 30) }), fresh}, with(func(r *TakeoverRule) { r.MaxLag = 0 }), Fit, ""},
		{"lag unknown", Candidate{"n2", edit(replicaOf("n2", "n1"), func(m *Member) { m.LagBytes = nil }), fresh}, rule, UnfitLagUnknown, "n2's lag is unknown"},
		{"tagged nofailover but named", Candidate{"n2", edit(replicaOf("n2", "n1"), func(m *Member) { m.Tags.NoFailover = true }), fresh}, rule, Fit, ""},
		{"synchronous mode, not a standby", Candidate{"n2", replicaOf("n2", "n1"), fresh},
			with(func(r *TakeoverRule) {
				r.SyncRequired, r.Sync = true, &SyncState{Leader: "n1", Standbys: []string{"n3"}}
			}), UnfitNotSync, "n2 is not a synchronous standby"},
		{"synchronous mode, no sync key", Candidate{"n2", replicaOf("n2", "n1"), fresh},
			with(func(r *TakeoverRule) { r.SyncRequired = true }), UnfitNotSync, "n2 is not a synchronous standby"},
		{"synchronous mode, a standby", Candidate{"n2", replicaOf("n2", "n1"), fresh},
			with(func(r *TakeoverRule) {
				r.SyncRequired, r.Sync = true, &SyncState{Leader: "n1", Standbys: []string{"n2"}}
			}), Fit, ""},
		{"failover: a lagging replica of nobody", Candidate{"n2", edit(replicaOf("n2", "n1"), func(m *Member) {
			m.State, m.Upstream, m.Streaming, m.LagBytes = "in recovery, no upstream", "", false, lagOf(1<<30)
		}), fresh},
			with(func(r *TakeoverRule) { r.Failover, r.Leader = true, "" }), Fit, ""},
		{"failover: starting", Candidate{"n2", edit(replicaOf("n2", "n1"), func(m *Member) { m.Role = RoleStarting }), fresh},
			with(func(r *TakeoverRule) { r.Failover = true }), UnfitNotRunning, "n2 is starting, not a running replica"},
		{"failover: stale", Candidate{"n2", replicaOf("n2", "n1"), time.Minute}, with(func(r *TakeoverRule) { r.Failover = true }), UnfitStale, "n2's record is stale"},
		{"failover: the leader", Candidate{"n1", replicaOf("n1", "n1"), fresh}, with(func(r *TakeoverRule) { r.Failover = true }), UnfitLeads, "n1 already leads"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := CheckTakeover(tc.c, tc.r)
			if v.Reason != tc.want || v.OK() != (tc.want == Fit) {
				t.Errorf("reason %d (%q), want %d", v.Reason, v, tc.want)
			}
			if got := v.String(); got != tc.says {
				t.Errorf("says %q, want %q", got, tc.says)
			}
		})
	}
}

func TestPickTakeover(t *testing.T) {
	rule := TakeoverRule{Leader: "n1", StaleAfter: 3 * time.Second}
	at := func(m *Member, lsn, receive LSN) *Member { m.LSN, m.ReceiveLSN = lsn, receive; return m }
	cand := func(m *Member) Candidate { return Candidate{Name: m.Name, Record: m, Age: time.Second} }
	noFailover := func(m *Member) *Member { m.Tags.NoFailover = true; return m }
	leader := &Member{Name: "n1", Role: RolePrimary, State: "running", Host: "h", Port: 1, LagBytes: lagOf(0), LSN: 0x9000000}
	for _, tc := range []struct {
		name    string
		cands   []Candidate
		want    string
		reasons []string
	}{
		{"the most advanced, by receive LSN too", []Candidate{
			cand(leader), cand(at(replicaOf("n2", "n1"), 0x3000000, 0)), cand(at(replicaOf("n3", "n1"), 0x2000000, 0x3000100)),
		}, "n3", nil},
		{"ties by name", []Candidate{
			cand(at(replicaOf("n3", "n1"), 0x3000000, 0)), cand(at(replicaOf("n2", "n1"), 0x3000000, 0)),
		}, "n2", nil},
		{"nofailover is passed over", []Candidate{
			cand(noFailover(at(replicaOf("n2", "n1"), 0x4000000, 0))), cand(at(replicaOf("n3", "n1"), 0x3000000, 0)),
		}, "n3", nil},
		{"an unfit member is passed over however advanced", []Candidate{
			cand(at(replicaOf("n2", "n9"), 0x4000000, 0)), cand(at(replicaOf("n3", "n1"), 0x3000000, 0)),
		}, "n3", nil},
		{"none: every other member's reason, by name, the leader left out", []Candidate{
			cand(replicaOf("n3", "n9")), cand(leader), cand(noFailover(replicaOf("n2", "n1"))), {Name: "n4", Record: replicaOf("n4", "n1"), Age: time.Hour},
		}, "", []string{"n2 is tagged nofailover", "n3 is not streaming from n1 (replica, streaming from n9)", "n4's record is stale"}},
		{"none: only the leader", []Candidate{cand(leader)}, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, verdicts := PickTakeover(tc.cands, rule)
			var reasons []string
			for _, v := range verdicts {
				reasons = append(reasons, v.String())
			}
			if got != tc.want || !slices.Equal(reasons, tc.reasons) {
				t.Errorf("picked %q with reasons %q, want %q with %q", got, reasons, tc.want, tc.reasons)
			}
		})
	}
}
