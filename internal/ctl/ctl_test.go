package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/ctl"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// etcd starts an embedded etcd for one test and returns a client of it.
func etcd(t *testing.T) *clientv3.Client {
	t.Helper()
	_, cli := etcdlocal.StartForTest(t)
	return cli
}

func keys(t *testing.T, name string) cluster.Keys {
	t.Helper()
	k, err := cluster.NewKeys(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func put(t *testing.T, cli *clientv3.Client, key, value string) int64 {
	t.Helper()
	resp, err := cli.Put(t.Context(), key, value)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func putMember(t *testing.T, cli *clientv3.Client, k cluster.Keys, m cluster.Member) {
	t.Helper()
	rec, err := cluster.MarshalMember(m)
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, k.Member(m.Name), string(rec))
}

func status(t *testing.T, cli *clientv3.Client, k cluster.Keys) clusterstate.ClusterStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	st, err := clusterstate.Status(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func table(t *testing.T, st clusterstate.ClusterStatus) string {
	t.Helper()
	var b bytes.Buffer
	if err := ctl.WriteTable(&b, st); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func ptr[T any](v T) *T { return &v }

// threeMembers writes a leader n1 and three members: a primary, a
// streaming replica 12 MB behind with tags, and a starting replica whose
// lag is unknown. It returns the leader's epoch.
func threeMembers(t *testing.T, cli *clientv3.Client, k cluster.Keys) int64 {
	t.Helper()
	putMember(t, cli, k, cluster.Member{Name: "n1", Role: cluster.RolePrimary, State: "running", Host: "10.0.0.1", Port: 5432, Timeline: 3, LSN: 0x3000060, LagBytes: ptr(int64(0))})
	putMember(t, cli, k, cluster.Member{
		Name: "n2", Role: cluster.RoleReplica, State: "streaming", Host: "10.0.0.2", Port: 5433, Timeline: 3,
		LagBytes: ptr(int64(12 << 20)), Tags: cluster.Tags{NoFailover: true, FailoverPriority: 2},
	})
	putMember(t, cli, k, cluster.Member{Name: "n3", Role: cluster.RoleStarting, State: "cloning", Host: "fd00::3", Port: 5434})
	epoch := put(t, cli, k.Leader(), "n1")
	put(t, cli, k.Initialize(), `{"system_id":"7400000000000000001","by":"n1"}`)
	// Renewing the key (a new mod revision) keeps the epoch.
	put(t, cli, k.Leader(), "n1")
	// Another cluster's keys are not this one's.
	other := keys(t, "c10")
	putMember(t, cli, other, cluster.Member{Name: "x1", Role: cluster.RolePrimary, Host: "h", Port: 1})
	return epoch
}

func TestStatusTable(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "c1")
	epoch := threeMembers(t, cli, k)

	got := table(t, status(t, cli, k))
	lines := strings.Split(strings.TrimRight(got, "\n"), "\n")
	fields := func(line string) []string { return strings.Fields(line) }
	want := [][]string{
		{"MEMBER", "HOST:PORT", "ROLE", "STATE", "TL", "LAG", "LEADER", "TAGS"},
		{"n1", "10.0.0.1:5432", "primary", "running", "3", "0", "B", "*", "epoch", itoa(epoch), "-"},
		{"n2", "10.0.0.2:5433", "replica", "streaming", "3", "12", "MB", "-", "nofailover,failover_priority=2"},
		{"n3", "[fd00::3]:5434", "starting", "cloning", "-", "unknown", "-", "-"},
	}
	if len(lines) < len(want)+2 {
		t.Fatalf("table has %d lines:\n%s", len(lines), got)
	}
	for i, w := range want {
		if g := fields(lines[i]); strings.Join(g, " ") != strings.Join(w, " ") {
			t.Errorf("line %d = %q, want fields %q\n%s", i, lines[i], w, got)
		}
	}
	// The columns line up: each header starts where its values start.
	header := lines[0]
	for _, col := range []string{"HOST:PORT", "ROLE", "LAG", "TAGS"} {
		at := strings.Index(header, col)
		for _, row := range lines[1:4] {
			if at >= len(row) || row[at-1] != ' ' || row[at] == ' ' {
				t.Errorf("column %s is not aligned in %q", col, row)
			}
		}
	}
	for _, line := range []string{
		"leader n1 (epoch " + itoa(epoch) + ")",
		"bootstrapped by n1, system identifier 7400000000000000001",
	} {
		if !strings.Contains(got, line+"\n") {
			t.Errorf("no line %q in\n%s", line, got)
		}
	}
	if strings.Contains(got, "x1") || strings.Contains(got, "invalid") || strings.Contains(got, "warning") {
		t.Errorf("unexpected content in\n%s", got)
	}
}

func TestStatusJSON(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "c1")
	epoch := threeMembers(t, cli, k)
	st := status(t, cli, k)

	var b bytes.Buffer
	if err := ctl.WriteJSON(&b, st); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Prefix   string `json:"prefix"`
		Revision int64  `json:"revision"`
		Leader   *struct {
			Name      string `json:"name"`
			Epoch     int64  `json:"epoch"`
			HasRecord bool   `json:"has_record"`
		} `json:"leader"`
		Members []map[string]any `json:"members"`
		Proxies []any            `json:"proxies"`
		Init    struct {
			SystemID string `json:"system_id"`
			By       string `json:"by"`
		} `json:"initialize"`
		History []any `json:"history"`
		Invalid []any `json:"invalid"`
	}
	dec := json.NewDecoder(&b)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if got.Prefix != "/pharos/c1/" || got.Revision != st.Revision || got.Revision < epoch {
		t.Errorf("prefix %q revision %d, want /pharos/c1/ and %d ≥ %d", got.Prefix, got.Revision, st.Revision, epoch)
	}
	if got.Leader == nil || got.Leader.Name != "n1" || got.Leader.Epoch != epoch || !got.Leader.HasRecord {
		t.Errorf("leader %+v, want n1 with epoch %d and a record", got.Leader, epoch)
	}
	var names []string
	for _, m := range got.Members {
		names = append(names, m["name"].(string))
	}
	if strings.Join(names, ",") != "n1,n2,n3" {
		t.Errorf("members %v, want n1,n2,n3 in order", names)
	}
	if len(got.Members) == 3 {
		if got.Members[0]["lsn"] != "0/3000060" || got.Members[1]["lag_bytes"] != float64(12<<20) {
			t.Errorf("member fields lost: %v", got.Members[:2])
		}
		if tags, _ := got.Members[1]["tags"].(map[string]any); tags["nofailover"] != true || tags["failover_priority"] != float64(2) {
			t.Errorf("n2 tags = %v", got.Members[1]["tags"])
		}
		if _, ok := got.Members[2]["lag_bytes"]; ok {
			t.Errorf("n3 has a lag: %v", got.Members[2])
		}
	}
	if got.Init.By != "n1" || got.Init.SystemID != "7400000000000000001" {
		t.Errorf("initialize %+v", got.Init)
	}
	// Empty lists are [], not null, so scripts can iterate them.
	if got.History == nil || got.Invalid == nil {
		t.Errorf("history %v, invalid %v: want []", got.History, got.Invalid)
	}
}

func TestStatusNoLeader(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "c1")
	putMember(t, cli, k, cluster.Member{Name: "n1", Role: cluster.RoleReplica, Host: "h1", Port: 5432})
	putMember(t, cli, k, cluster.Member{Name: "n2", Role: cluster.RolePrimary, Host: "h2", Port: 5432})

	st := status(t, cli, k)
	if st.Leader != nil {
		t.Errorf("leader %+v, want none", st.Leader)
	}
	got := table(t, st)
	for _, line := range []string{"no leader", "warning: n2 says primary but does not hold the leader key"} {
		if !strings.Contains(got, "\n"+line+"\n") {
			t.Errorf("no line %q in\n%s", line, got)
		}
	}
	if strings.Contains(got, "epoch") {
		t.Errorf("an epoch without a leader:\n%s", got)
	}
}

func TestStatusLeaderWithoutRecord(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "c1")
	putMember(t, cli, k, cluster.Member{Name: "n1", Role: cluster.RoleReplica, Host: "h1", Port: 5432})
	epoch := put(t, cli, k.Leader(), "n4")

	st := status(t, cli, k)
	if st.Leader == nil || st.Leader.Name != "n4" || st.Leader.Epoch != epoch || st.Leader.HasRecord {
		t.Errorf("leader %+v, want n4 at epoch %d without a record", st.Leader, epoch)
	}
	got := table(t, st)
	if want := "leader n4 (epoch " + itoa(epoch) + "), which has no member record\n"; !strings.Contains(got, want) {
		t.Errorf("no %q in\n%s", want, got)
	}
}

func TestStatusLeaderNotYetPrimary(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "c1")
	putMember(t, cli, k, cluster.Member{Name: "n2", Role: cluster.RoleStarting, Host: "h2", Port: 5432})
	epoch := put(t, cli, k.Leader(), "n2")

	got := table(t, status(t, cli, k))
	if want := "leader n2 (epoch " + itoa(epoch) + "), whose record says starting\n"; !strings.Contains(got, want) {
		t.Errorf("no %q in\n%s", want, got)
	}
}

func TestStatusReportsInvalidRecords(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "c1")
	putMember(t, cli, k, cluster.Member{Name: "n1", Role: cluster.RolePrimary, Host: "h1", Port: 5432})
	put(t, cli, k.Leader(), "n1")
	badRev := put(t, cli, k.Member("n2"), `{"name":"n2","role":"primary"`)
	put(t, cli, k.Member("n3"), `{"name":"n1","role":"replica","host":"h","port":5432}`)
	put(t, cli, k.MembersPrefix()+"bad name", `{}`)
	put(t, cli, k.History(), `{"not":"an array"}`)
	put(t, cli, k.Prefix()+"future-key", `whatever`) // not part of the layout: ignored

	st := status(t, cli, k)
	if len(st.Members) != 1 || st.Members[0].Name != "n1" || st.Leader == nil || !st.Leader.HasRecord {
		t.Errorf("members %+v, leader %+v: want the valid n1 only, leading", st.Members, st.Leader)
	}
	want := map[string]string{
		k.Member("n2"):                 "member record",
		k.Member("n3"):                 `names member "n1"`,
		k.MembersPrefix() + "bad name": "not a member name",
		k.History():                    "history",
	}
	if len(st.Invalid) != len(want) {
		t.Errorf("invalid = %+v, want %d records", st.Invalid, len(want))
	}
	for _, r := range st.Invalid {
		if !strings.Contains(r.Error, want[r.Key]) || want[r.Key] == "" {
			t.Errorf("invalid %s: %q, want it to mention %q", r.Key, r.Error, want[r.Key])
		}
		if r.Key == k.Member("n2") && r.ModRevision != badRev {
			t.Errorf("n2 mod revision %d, want %d", r.ModRevision, badRev)
		}
	}
	got := table(t, st)
	if !strings.Contains(got, "invalid records:\n") || !strings.Contains(got, "  "+k.Member("n2")+" (mod revision "+itoa(badRev)+"): member record") {
		t.Errorf("invalid records not shown:\n%s", got)
	}
}

// TestStatusListsProxies: live proxies are listed under the members, in
// the table and in JSON; a half-written record, one on no lease and one
// naming another proxy are invalid records instead.
func TestStatusListsProxies(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "c1")
	threeMembers(t, cli, k)
	lease, err := cli.Grant(t.Context(), 60)
	if err != nil {
		t.Fatal(err)
	}
	putProxy := func(key string, p cluster.Proxy, leased bool) {
		t.Helper()
		b, err := cluster.MarshalProxy(p)
		if err != nil {
			t.Fatal(err)
		}
		var opts []clientv3.OpOption
		if leased {
			opts = append(opts, clientv3.WithLease(lease.ID))
		}
		if _, err := cli.Put(t.Context(), key, string(b), opts...); err != nil {
			t.Fatal(err)
		}
	}
	started := time.Date(2026, 12, 2, 18, 0, 0, 0, time.UTC)
	pa := cluster.Proxy{Name: "pa:6432", Version: "v1.2", StartedAt: started, CancelID: 1,
		Listeners: cluster.ProxyListeners{RW: "10.0.0.9:6432", RO: "10.0.0.9:6433", Metrics: "10.0.0.9:6434"}}
	pb := cluster.Proxy{Name: "pb", Version: "v1.2", StartedAt: started, Listeners: cluster.ProxyListeners{RO: "10.0.0.8:6433"}}
	putProxy(k.Proxy("pb"), pb, true)
	putProxy(k.Proxy("pa:6432"), pa, true)
	putProxy(k.Proxy("unleased"), cluster.Proxy{Name: "unleased", Listeners: pb.Listeners}, false)
	putProxy(k.Proxy("liar"), pa, true)
	if _, err := cli.Put(t.Context(), k.Proxy("half"), `{"name":"half","listeners":{"rw":"10.`, clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(t.Context(), k.CancelID(1), "pa:6432", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}

	st := status(t, cli, k)
	if len(st.Proxies) != 2 || st.Proxies[0] != pa || st.Proxies[1] != pb {
		t.Fatalf("proxies %+v, want pa:6432 and pb", st.Proxies)
	}
	bad := map[string]string{k.Proxy("unleased"): "no lease", k.Proxy("liar"): `names proxy "pa:6432"`, k.Proxy("half"): "proxy record"}
	if len(st.Invalid) != len(bad) {
		t.Fatalf("invalid %+v, want %d", st.Invalid, len(bad))
	}
	for _, r := range st.Invalid {
		if w := bad[r.Key]; w == "" || !strings.Contains(r.Error, w) {
			t.Errorf("invalid %s: %q, want it to mention %q", r.Key, r.Error, w)
		}
	}
	got := table(t, st)
	blocks := strings.Split(got, "\n\n")
	last := strings.Split(strings.TrimRight(blocks[len(blocks)-1], "\n"), "\n")
	want := [][]string{
		{"PROXY", "RW", "RO", "METRICS", "VERSION", "STARTED", "CANCEL", "ID"},
		{"pa:6432", "10.0.0.9:6432", "10.0.0.9:6433", "10.0.0.9:6434", "v1.2", "2026-12-02T18:00:00Z", "1"},
		{"pb", "-", "10.0.0.8:6433", "-", "v1.2", "2026-12-02T18:00:00Z", "-"},
	}
	if len(last) != len(want) {
		t.Fatalf("last block of the table:\n%s\nwant the proxies", got)
	}
	for i, w := range want {
		if g := strings.Fields(last[i]); strings.Join(g, " ") != strings.Join(w, " ") {
			t.Errorf("proxy line %d = %q, want fields %q", i, last[i], w)
		}
	}
	if !strings.HasPrefix(got, "MEMBER") {
		t.Errorf("the members table no longer comes first:\n%s", got)
	}
	var js bytes.Buffer
	if err := ctl.WriteJSON(&js, st); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Proxies []map[string]any `json:"proxies"`
	}
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Proxies) != 2 || doc.Proxies[0]["name"] != "pa:6432" || doc.Proxies[0]["cancel_id"] != float64(1) ||
		doc.Proxies[0]["listeners"].(map[string]any)["metrics"] != "10.0.0.9:6434" || doc.Proxies[0]["started_at"] != "2026-12-02T18:00:00Z" {
		t.Errorf("JSON proxies: %v", doc.Proxies)
	}
}

// TestStatusNoProxiesJSON: with no proxy the JSON has an empty list, and
// the table no proxy block.
func TestStatusNoProxiesJSON(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "c1")
	threeMembers(t, cli, k)
	st := status(t, cli, k)
	var js bytes.Buffer
	if err := ctl.WriteJSON(&js, st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(js.String(), `"proxies": []`) {
		t.Errorf("JSON without proxies:\n%s", js.String())
	}
	if strings.Contains(table(t, st), "PROXY") {
		t.Error("a proxy table without proxies")
	}
}

func TestStatusEmptyCluster(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "nobody")
	got := table(t, status(t, cli, k))
	if !strings.HasPrefix(got, "nothing under /pharos/nobody/") || strings.Count(got, "\n") != 1 {
		t.Errorf("table of an empty cluster:\n%s", got)
	}
}

func TestHistory(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "c1")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()

	t.Run("no key", func(t *testing.T) {
		h, err := clusterstate.History(ctx, cli, k)
		if err != nil || len(h) != 0 {
			t.Fatalf("History = %v, %v; want empty", h, err)
		}
		var tb, js bytes.Buffer
		if err := ctl.WriteHistoryTable(&tb, h); err != nil {
			t.Fatal(err)
		}
		if err := ctl.WriteHistoryJSON(&js, h); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(tb.String(), "no history") || strings.TrimSpace(js.String()) != "[]" {
			t.Errorf("table %q, JSON %q", tb.String(), js.String())
		}
	})

	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	hist := cluster.History{
		{Timeline: 1, Reason: "bootstrap", Time: t0, NewLeader: "n1", Epoch: 5},
		{Timeline: 2, LSN: 0x3000060, Reason: "failover", Time: t0.Add(time.Hour), NewLeader: "n2", OldLeader: "n1", Epoch: 9},
	}
	data, err := cluster.MarshalHistory(hist)
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, k.History(), string(data))

	t.Run("table", func(t *testing.T) {
		h, err := clusterstate.History(ctx, cli, k)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := ctl.WriteHistoryTable(&b, h); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
		want := []string{
			"TL LSN REASON TIME NEW LEADER OLD LEADER",
			"1 0/0 bootstrap 2026-03-01T12:00:00Z n1 -",
			"2 0/3000060 failover 2026-03-01T13:00:00Z n2 n1",
		}
		if len(lines) != len(want) {
			t.Fatalf("history table:\n%s", b.String())
		}
		for i := range want {
			if got := strings.Join(strings.Fields(lines[i]), " "); got != want[i] {
				t.Errorf("line %d = %q, want %q", i, lines[i], want[i])
			}
		}
	})

	t.Run("JSON", func(t *testing.T) {
		h, err := clusterstate.History(ctx, cli, k)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := ctl.WriteHistoryJSON(&b, h); err != nil {
			t.Fatal(err)
		}
		back, err := cluster.ParseHistory(b.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if len(back) != 2 || back[1].OldLeader != "n1" || back[1].LSN != 0x3000060 || !back[0].Time.Equal(t0) {
			t.Errorf("history JSON round trip = %+v\n%s", back, b.String())
		}
	})

	t.Run("malformed", func(t *testing.T) {
		put(t, cli, k.History(), `[{"timeline":0}]`)
		if _, err := clusterstate.History(ctx, cli, k); err == nil || !strings.Contains(err.Error(), k.History()) {
			t.Errorf("History of a malformed key: %v, want an error naming the key", err)
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
