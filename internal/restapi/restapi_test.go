package restapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/internal/restapi"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeBackend is a plain test double for the agent: a settable status and
// a record of the calls. What is under test is the HTTP layer.
type fakeBackend struct {
	mu      sync.Mutex
	status  restapi.NodeStatus
	view    any
	history cluster.History
	err     error         // returned by every call but Status
	block   chan struct{} // when not nil, Restart waits for it to close
	entered chan struct{} // with block: receives when Restart starts waiting
	calls   []call
	// clusterAuth records the authenticated argument of each Cluster call.
	clusterAuth []bool
}

type call struct {
	op  string
	req restapi.SwitchoverRequest
}

func (b *fakeBackend) set(st restapi.NodeStatus) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.status = st
}

func (b *fakeBackend) setErr(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.err = err
}

func (b *fakeBackend) record(op string, req restapi.SwitchoverRequest) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, call{op, req})
	return b.err
}

func (b *fakeBackend) takeCalls() []call {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.calls
	b.calls = nil
	return c
}

func (b *fakeBackend) Status() restapi.NodeStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

func (b *fakeBackend) Cluster(_ context.Context, authenticated bool) (any, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.clusterAuth = append(b.clusterAuth, authenticated)
	return b.view, b.err
}

// takeClusterAuth returns what each Cluster call was told about the
// caller's credentials.
func (b *fakeBackend) takeClusterAuth() []bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.clusterAuth
	b.clusterAuth = nil
	return c
}

func (b *fakeBackend) History(context.Context) (cluster.History, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.history, b.err
}

func (b *fakeBackend) Switchover(_ context.Context, r restapi.SwitchoverRequest) error {
	return b.record("switchover", r)
}

func (b *fakeBackend) Failover(_ context.Context, r restapi.SwitchoverRequest) error {
	return b.record("failover", r)
}

func (b *fakeBackend) Restart(ctx context.Context) error {
	b.mu.Lock()
	block := b.block
	b.mu.Unlock()
	if block != nil {
		b.entered <- struct{}{}
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.record("restart", restapi.SwitchoverRequest{})
}

func (b *fakeBackend) Reinitialize(context.Context) error {
	return b.record("reinitialize", restapi.SwitchoverRequest{})
}

// testServer is a running Server and what the test needs to talk to it.
type testServer struct {
	*restapi.Server
	URL     string
	Backend *fakeBackend
	Client  *http.Client
	logs    *syncBuffer
	stop    context.CancelFunc
	done    chan error
}

// startServer runs a server on a free loopback port until the test ends.
// cfg.Listen and cfg.LoopStale get defaults.
func startServer(t *testing.T, cfg restapi.Config, b *fakeBackend) *testServer {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.LoopStale == 0 {
		cfg.LoopStale = time.Minute
	}
	if b == nil {
		b = &fakeBackend{}
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := restapi.New(cfg, b, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ts := &testServer{
		Server:  srv,
		URL:     "http://" + srv.Addr(),
		Backend: b,
		// No keep-alive: no client goroutines outlive a request.
		Client: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second},
		logs:   logs,
		stop:   stop,
		done:   make(chan error, 1),
	}
	go func() { ts.done <- srv.Serve(ctx) }()
	t.Cleanup(func() { ts.Stop(t) })
	return ts
}

// Stop ends Serve and checks it returned nil within the shutdown bound;
// safe to call twice.
func (ts *testServer) Stop(t *testing.T) {
	t.Helper()
	ts.stop()
	if ts.done == nil {
		return
	}
	select {
	case err := <-ts.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Serve did not return within 10s of its context ending")
	}
	ts.done = nil
}

// do sends a request and returns the status, headers and body. A POST
// declares Content-Type: application/json, as the API requires, unless hdr
// sets Content-Type (an empty list sends none).
func (ts *testServer) do(t *testing.T, method, path string, body string, hdr http.Header) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, ts.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header[k] = v
		if len(v) == 0 {
			delete(req.Header, k)
		}
	}
	resp, err := ts.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Node states for the health tables. LoopAt is relative to now; the
// servers use LoopStale = 1 minute.
func primaryStatus(now time.Time) restapi.NodeStatus {
	return restapi.NodeStatus{
		Name: "n1", Role: cluster.RolePrimary, State: "running", Running: true, Leader: true,
		LagBytes: 0, Timeline: 3, LSN: 0x3000060, LoopAt: now, Epoch: 7,
	}
}

func replicaStatus(now time.Time) restapi.NodeStatus {
	return restapi.NodeStatus{
		Name: "n2", Role: cluster.RoleReplica, State: "streaming", Running: true, Streaming: true,
		LagBytes: 1024, Timeline: 3, LSN: 0x3000000, LoopAt: now, Epoch: 7,
	}
}

var healthPaths = []string{
	"/primary", "/master", "/", "/read-write", "/leader", "/standby-leader",
	"/replica", "/read-only", "/health", "/liveness", "/readiness",
}

// TestHealthEndpoints checks every health endpoint against every kind of
// node, with GET, HEAD and OPTIONS answering the same status code.
func TestHealthEndpoints(t *testing.T) {
	now := time.Now()
	const ok, no = http.StatusOK, http.StatusServiceUnavailable
	// want lists the 200s; every other health path must answer 503.
	tests := []struct {
		name string
		st   func() restapi.NodeStatus
		want []string
	}{
		{
			name: "primary holding the leader key",
			st:   func() restapi.NodeStatus { return primaryStatus(now) },
			want: []string{"/primary", "/master", "/", "/read-write", "/leader", "/read-only", "/health", "/liveness", "/readiness"},
		},
		{
			name: "primary without the leader key (fenced or demoting)",
			st: func() restapi.NodeStatus {
				st := primaryStatus(now)
				st.Leader = false
				return st
			},
			want: []string{"/health", "/liveness"},
		},
		{
			name: "leader key held while PostgreSQL is down",
			st: func() restapi.NodeStatus {
				st := primaryStatus(now)
				st.Running = false
				return st
			},
			want: []string{"/leader", "/liveness"},
		},
		{
			name: "primary tagged noloadbalance still takes writes and reads",
			st: func() restapi.NodeStatus {
				st := primaryStatus(now)
				st.Tags.NoLoadBalance = true
				return st
			},
			want: []string{"/primary", "/master", "/", "/read-write", "/leader", "/read-only", "/health", "/liveness", "/readiness"},
		},
		{
			name: "streaming replica",
			st:   func() restapi.NodeStatus { return replicaStatus(now) },
			want: []string{"/replica", "/read-only", "/health", "/liveness", "/readiness"},
		},
		{
			name: "replica not streaming (lag unknown)",
			st: func() restapi.NodeStatus {
				st := replicaStatus(now)
				st.Streaming, st.LagBytes, st.State = false, -1, "running"
				return st
			},
			want: []string{"/replica", "/read-only", "/health", "/liveness"},
		},
		{
			name: "replica tagged noloadbalance",
			st: func() restapi.NodeStatus {
				st := replicaStatus(now)
				st.Tags.NoLoadBalance = true
				return st
			},
			want: []string{"/health", "/liveness", "/readiness"},
		},
		{
			name: "replica tagged nofailover is still load-balanced",
			st: func() restapi.NodeStatus {
				st := replicaStatus(now)
				st.Tags.NoFailover = true
				return st
			},
			want: []string{"/replica", "/read-only", "/health", "/liveness", "/readiness"},
		},
		{
			name: "replica with PostgreSQL down",
			st: func() restapi.NodeStatus {
				st := replicaStatus(now)
				st.Running, st.Streaming, st.Role = false, false, cluster.RoleStopped
				return st
			},
			want: []string{"/liveness"},
		},
		{
			name: "replica role but not running",
			st: func() restapi.NodeStatus {
				st := replicaStatus(now)
				st.Running = false
				return st
			},
			want: []string{"/liveness"},
		},
		{
			name: "starting (cloning)",
			st: func() restapi.NodeStatus {
				return restapi.NodeStatus{Name: "n3", Role: cluster.RoleStarting, LagBytes: -1, LoopAt: now}
			},
			want: []string{"/liveness"},
		},
		{
			name: "demoted former primary, running",
			st: func() restapi.NodeStatus {
				return restapi.NodeStatus{Name: "n1", Role: cluster.RoleDemoted, Running: true, LagBytes: -1, LoopAt: now}
			},
			want: []string{"/health", "/liveness"},
		},
		{
			name: "stopped",
			st: func() restapi.NodeStatus {
				return restapi.NodeStatus{Name: "n1", Role: cluster.RoleStopped, LagBytes: -1, LoopAt: now}
			},
			want: []string{"/liveness"},
		},
		{
			name: "primary whose HA loop is stale",
			st: func() restapi.NodeStatus {
				st := primaryStatus(now)
				st.LoopAt = now.Add(-2 * time.Minute)
				return st
			},
			want: []string{"/primary", "/master", "/", "/read-write", "/leader", "/read-only", "/health", "/readiness"},
		},
		{
			name: "replica whose HA loop never completed",
			st: func() restapi.NodeStatus {
				st := replicaStatus(now)
				st.LoopAt = time.Time{}
				return st
			},
			want: []string{"/replica", "/read-only", "/health", "/readiness"},
		},
		{
			name: "paused with a stale loop is alive",
			st: func() restapi.NodeStatus {
				st := replicaStatus(now)
				st.LoopAt, st.Paused = now.Add(-time.Hour), true
				return st
			},
			want: []string{"/replica", "/read-only", "/health", "/liveness", "/readiness"},
		},
		{
			name: "zero status",
			st:   func() restapi.NodeStatus { return restapi.NodeStatus{} },
			want: nil,
		},
	}
	ts := startServer(t, restapi.Config{}, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts.Backend.set(tt.st())
			want := map[string]int{}
			for _, p := range healthPaths {
				want[p] = no
			}
			for _, p := range tt.want {
				want[p] = ok
			}
			for _, p := range healthPaths {
				checkAllMethods(t, ts, p, want[p])
			}
		})
	}
}

// checkAllMethods asserts that GET, HEAD and OPTIONS on path answer code,
// and that GET's body is the JSON status document.
func checkAllMethods(t *testing.T, ts *testServer, path string, code int) {
	t.Helper()
	for _, m := range []string{http.MethodOptions, http.MethodHead, http.MethodGet} {
		got, hdr, body := ts.do(t, m, path, "", nil)
		if got != code {
			t.Errorf("%s %s = %d, want %d (body %q)", m, path, got, code, body)
		}
		switch m {
		case http.MethodGet:
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("GET %s Content-Type %q", path, ct)
			}
			var doc map[string]any
			if err := json.Unmarshal([]byte(body), &doc); err != nil {
				t.Errorf("GET %s body %q: %v", path, body, err)
			} else if _, ok := doc["state"]; !ok {
				t.Errorf("GET %s body has no state: %s", path, body)
			}
		default:
			if body != "" {
				t.Errorf("%s %s has a body: %q", m, path, body)
			}
		}
	}
}

func TestReplicaQuery(t *testing.T) {
	now := time.Now()
	lagging := func(n int64) func() restapi.NodeStatus {
		return func() restapi.NodeStatus {
			st := replicaStatus(now)
			st.LagBytes = n
			return st
		}
	}
	const ok, no = http.StatusOK, http.StatusServiceUnavailable
	tests := []struct {
		name string
		st   func() restapi.NodeStatus
		path string
		want int
	}{
		{"lag in bytes above", lagging(1024), "/replica?lag=2048", ok},
		{"lag equal to the limit", lagging(1024), "/replica?lag=1024", ok},
		{"lag one byte over", lagging(1025), "/replica?lag=1024", no},
		{"kB", lagging(1024), "/replica?lag=1kB", ok},
		{"kB over", lagging(1025), "/replica?lag=1kB", no},
		{"MB", lagging(16 << 20), "/replica?lag=16MB", ok},
		{"MB over", lagging(16<<20 + 1), "/replica?lag=16MB", no},
		{"GB", lagging(1 << 30), "/replica?lag=1GB", ok},
		{"fraction", lagging(1536), "/replica?lag=1.5kB", ok},
		{"fraction over", lagging(1537), "/replica?lag=1.5kB", no},
		{"B unit", lagging(10), "/replica?lag=10B", ok},
		{"space before the unit", lagging(1024), "/replica?lag=1%20kB", ok},
		{"zero lag limit, caught up", lagging(0), "/replica?lag=0", ok},
		{"zero lag limit, behind", lagging(1), "/replica?lag=0", no},
		{"unknown lag fails a limit", lagging(-1), "/replica?lag=1TB", no},
		{"unknown lag passes without a limit", lagging(-1), "/replica", ok},
		{"first lag value counts", lagging(2048), "/replica?lag=1kB&lag=1MB", no},
		// Patroni ignores a lag it cannot parse (no limit): an existing
		// configuration keeps the meaning it had there.
		{"unparsable lag is ignored", lagging(1 << 40), "/replica?lag=abc", ok},
		{"lower-case unit is not a unit", lagging(1 << 40), "/replica?lag=1mb", ok},
		{"unknown unit", lagging(1 << 40), "/replica?lag=1XB", ok},
		{"negative", lagging(1 << 40), "/replica?lag=-5", ok},
		{"empty", lagging(1 << 40), "/replica?lag=", ok},
		{"unparsable lag on a primary", func() restapi.NodeStatus { return primaryStatus(now) }, "/replica?lag=abc", no},
		{"read-only: lag applies to replicas", lagging(4096), "/read-only?lag=1kB", no},
		{"read-only: lag does not apply to the primary", func() restapi.NodeStatus { return primaryStatus(now) }, "/read-only?lag=1", ok},
		{"readiness within lag", lagging(1024), "/readiness?lag=1MB", ok},
		{"readiness over lag", lagging(2 << 20), "/readiness?lag=1MB", no},
		{"readiness with unknown lag and a limit", lagging(-1), "/readiness?lag=1MB", no},
		{"readiness of the leader ignores lag", func() restapi.NodeStatus { return primaryStatus(now) }, "/readiness?lag=0", ok},
		{"primary ignores lag", func() restapi.NodeStatus { return primaryStatus(now) }, "/primary?lag=0", ok},
		{"replication_state streaming", lagging(0), "/replica?replication_state=streaming", ok},
		{"replication_state of a replica not streaming", func() restapi.NodeStatus {
			st := replicaStatus(now)
			st.Streaming = false
			return st
		}, "/replica?replication_state=streaming", no},
		{"tag matches", lagging(0), "/replica?tag_noloadbalance=false&tag_nofailover=false", ok},
		{"tag differs", lagging(0), "/replica?tag_nofailover=true", no},
		{"failover_priority tag", lagging(0), "/replica?tag_failover_priority=0", ok},
		{"undefined tag", lagging(0), "/replica?tag_datacenter=east", no},
		{"tags apply to /health", lagging(0), "/health?tag_datacenter=east", no},
		{"tags ignored on /primary", func() restapi.NodeStatus { return primaryStatus(now) }, "/primary?tag_datacenter=east", ok},
		{"tags ignored on /leader", func() restapi.NodeStatus { return primaryStatus(now) }, "/leader?tag_nofailover=true", ok},
	}
	ts := startServer(t, restapi.Config{}, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts.Backend.set(tt.st())
			checkAllMethods(t, ts, tt.path, tt.want)
		})
	}
	if !strings.Contains(ts.logs.String(), "unparsable lag") {
		t.Errorf("no warning logged about an unparsable lag")
	}
}

func TestParseLag(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "0", want: 0},
		{in: "1048576", want: 1048576},
		{in: "1024kB", want: 1 << 20},
		{in: "10MB", want: 10 << 20},
		{in: "1GB", want: 1 << 30},
		{in: "2TB", want: 2 << 40},
		{in: "16kB", want: 16 << 10},
		{in: "1.5MB", want: 3 << 19},
		{in: "0.4B", want: 0},
		{in: " 64 MB ", want: 64 << 20},
		{in: "7B", want: 7},
		{in: "", wantErr: true},
		{in: "MB", wantErr: true},
		{in: "1mb", wantErr: true},
		{in: "1KB", wantErr: true},
		{in: "1 PB", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "+1", wantErr: true},
		{in: "1.", wantErr: true},
		{in: ".5MB", wantErr: true},
		{in: "1e3", wantErr: true},
		{in: "0x400", wantErr: true},
		{in: "1 2", wantErr: true},
		{in: "99999999999TB", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.in), func(t *testing.T) {
			got, err := restapi.ParseLag(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseLag(%q) = %d, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseLag(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestStatusDocument checks the GET health JSON keeps Patroni's field
// names.
func TestStatusDocument(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	ts := startServer(t, restapi.Config{}, nil)

	st := primaryStatus(now)
	st.PendingRestart = true
	ts.Backend.set(st)
	for _, path := range []string{"/primary", "/patroni"} {
		code, _, body := ts.do(t, http.MethodGet, path, "", nil)
		if code != http.StatusOK {
			t.Fatalf("GET %s = %d", path, code)
		}
		var doc struct {
			State          string `json:"state"`
			Role           string `json:"role"`
			Timeline       int64  `json:"timeline"`
			PendingRestart bool   `json:"pending_restart"`
			XLog           struct {
				Location *uint64 `json:"location"`
			} `json:"xlog"`
			Pharos struct {
				Name   string    `json:"name"`
				Leader bool      `json:"leader"`
				Epoch  int64     `json:"epoch"`
				LSN    string    `json:"lsn"`
				LoopAt time.Time `json:"loop_at"`
			} `json:"pharos"`
		}
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			t.Fatal(err)
		}
		if doc.State != "running" || doc.Role != "primary" || doc.Timeline != 3 || !doc.PendingRestart ||
			doc.XLog.Location == nil || *doc.XLog.Location != 0x3000060 ||
			doc.Pharos.Name != "n1" || !doc.Pharos.Leader || doc.Pharos.Epoch != 7 ||
			doc.Pharos.LSN != "0/3000060" || !doc.Pharos.LoopAt.Equal(now) {
			t.Errorf("GET %s document %s", path, body)
		}
	}

	st = replicaStatus(now)
	st.Tags.NoFailover = true
	ts.Backend.set(st)
	_, _, body := ts.do(t, http.MethodGet, "/replica", "", nil)
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	xlog, _ := doc["xlog"].(map[string]any)
	tags, _ := doc["tags"].(map[string]any)
	if doc["state"] != "running" || doc["role"] != "replica" || doc["replication_state"] != "streaming" ||
		doc["lag"] != float64(1024) || xlog["replayed_location"] != float64(0x3000000) || xlog["location"] != nil ||
		tags["nofailover"] != true || doc["pause"] != nil {
		t.Errorf("replica document %s", body)
	}

	ts.Backend.set(restapi.NodeStatus{Name: "n3", Role: cluster.RoleStopped, LagBytes: -1, Paused: true})
	_, _, body = ts.do(t, http.MethodGet, "/health", "", nil)
	doc = nil
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["state"] != "stopped" || doc["role"] != "stopped" || doc["pause"] != true || doc["xlog"] != nil || doc["lag"] != nil {
		t.Errorf("stopped document %s", body)
	}
}

func TestViews(t *testing.T) {
	b := &fakeBackend{
		view: map[string]any{"members": []string{"n1", "n2"}},
		history: cluster.History{{
			Timeline: 2, LSN: 0x3000060, Reason: "failover", NewLeader: "n2", OldLeader: "n1",
			Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		}},
	}
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "pharos_up 1\n")
	})
	ts := startServer(t, restapi.Config{Metrics: metrics}, b)

	code, hdr, body := ts.do(t, http.MethodGet, "/cluster", "", nil)
	if code != http.StatusOK || hdr.Get("Content-Type") != "application/json" || strings.TrimSpace(body) != `{"members":["n1","n2"]}` {
		t.Errorf("GET /cluster = %d %q", code, body)
	}
	code, _, body = ts.do(t, http.MethodGet, "/history", "", nil)
	var h cluster.History
	if err := json.Unmarshal([]byte(body), &h); code != http.StatusOK || err != nil || len(h) != 1 || h[0].NewLeader != "n2" {
		t.Errorf("GET /history = %d %q (%v)", code, body, err)
	}
	code, _, body = ts.do(t, http.MethodGet, "/metrics", "", nil)
	if code != http.StatusOK || body != "pharos_up 1\n" {
		t.Errorf("GET /metrics = %d %q", code, body)
	}
	if code, _, body = ts.do(t, http.MethodHead, "/cluster", "", nil); code != http.StatusOK || body != "" {
		t.Errorf("HEAD /cluster = %d %q", code, body)
	}

	b.mu.Lock()
	b.history = nil
	b.mu.Unlock()
	if code, _, body = ts.do(t, http.MethodGet, "/history", "", nil); code != http.StatusOK || strings.TrimSpace(body) != "[]" {
		t.Errorf("GET /history of an empty history = %d %q", code, body)
	}

	b.setErr(errors.New("etcd unreachable"))
	for _, path := range []string{"/cluster", "/history"} {
		if code, _, body = ts.do(t, http.MethodGet, path, "", nil); code != http.StatusServiceUnavailable || !strings.Contains(body, "etcd unreachable") {
			t.Errorf("GET %s with a failing backend = %d %q", path, code, body)
		}
	}

	noMetrics := startServer(t, restapi.Config{}, nil)
	if code, _, _ := noMetrics.do(t, http.MethodGet, "/metrics", "", nil); code != http.StatusNotFound {
		t.Errorf("GET /metrics without a handler = %d, want 404", code)
	}
}

func TestRouting(t *testing.T) {
	ts := startServer(t, restapi.Config{Username: "admin", Password: "pw"}, nil)
	ts.Backend.set(primaryStatus(time.Now()))
	tests := []struct {
		name, method, path string
		want               int
		allow              string
	}{
		{"unknown path", http.MethodGet, "/nope", http.StatusNotFound, ""},
		{"trailing slash", http.MethodGet, "/replica/", http.StatusNotFound, ""},
		{"sub-path", http.MethodGet, "/primary/x", http.StatusNotFound, ""},
		{"sync is not implemented", http.MethodGet, "/sync", http.StatusNotFound, ""},
		{"POST a health check", http.MethodPost, "/primary", http.StatusMethodNotAllowed, "GET, HEAD, OPTIONS"},
		{"PUT a health check", http.MethodPut, "/replica", http.StatusMethodNotAllowed, "GET, HEAD, OPTIONS"},
		{"POST a view", http.MethodPost, "/cluster", http.StatusMethodNotAllowed, "GET, HEAD"},
		{"OPTIONS a view", http.MethodOptions, "/history", http.StatusMethodNotAllowed, "GET, HEAD"},
		{"DELETE metrics", http.MethodDelete, "/metrics", http.StatusMethodNotAllowed, "GET, HEAD"},
		{"GET a mutation", http.MethodGet, "/switchover", http.StatusMethodNotAllowed, "POST"},
		{"DELETE a scheduled switchover", http.MethodDelete, "/switchover", http.StatusMethodNotAllowed, "POST"},
		{"DELETE restart", http.MethodDelete, "/restart", http.StatusMethodNotAllowed, "POST"},
		{"OPTIONS failover", http.MethodOptions, "/failover", http.StatusMethodNotAllowed, "POST"},
		{"PUT reinitialize", http.MethodPut, "/reinitialize", http.StatusMethodNotAllowed, "POST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, body := ts.do(t, tt.method, tt.path, "", nil)
			if code != tt.want {
				t.Errorf("%s %s = %d, want %d (%q)", tt.method, tt.path, code, tt.want, body)
			}
			if got := hdr.Get("Allow"); got != tt.allow {
				t.Errorf("Allow = %q, want %q", got, tt.allow)
			}
		})
	}
	if calls := ts.Backend.takeCalls(); len(calls) != 0 {
		t.Errorf("backend called: %v", calls)
	}
}

func basicAuth(user, pass string) http.Header {
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	req.SetBasicAuth(user, pass)
	return http.Header{"Authorization": req.Header["Authorization"]}
}

func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

func TestAuth(t *testing.T) {
	const user, pass, token = "admin", "s3cret-basic-pw", "s3cret-bearer-token"
	body := `{"leader":"n1","candidate":"n2"}`
	t.Run("no credentials configured refuses every mutation", func(t *testing.T) {
		ts := startServer(t, restapi.Config{}, nil)
		for _, path := range []string{"/switchover", "/failover", "/restart", "/reinitialize"} {
			for name, hdr := range map[string]http.Header{"none": nil, "basic": basicAuth(user, pass), "bearer": bearer(token)} {
				code, _, msg := ts.do(t, http.MethodPost, path, body, hdr)
				if code != http.StatusForbidden || !strings.Contains(msg, "no username/password or token configured") {
					t.Errorf("POST %s with %s auth = %d %q, want 403 naming the missing configuration", path, name, code, msg)
				}
			}
		}
		if calls := ts.Backend.takeCalls(); len(calls) != 0 {
			t.Errorf("backend called: %v", calls)
		}
		// Health checks need no credentials.
		if code, _, _ := ts.do(t, http.MethodOptions, "/liveness", "", nil); code != http.StatusServiceUnavailable {
			t.Errorf("OPTIONS /liveness = %d", code)
		}
	})

	tests := []struct {
		name      string
		cfg       restapi.Config
		hdr       http.Header
		wantCode  int
		challenge []string
	}{
		{"basic: none sent", restapi.Config{Username: user, Password: pass}, nil, 401, []string{`Basic realm="pharos"`}},
		{"basic: wrong password", restapi.Config{Username: user, Password: pass}, basicAuth(user, "nope"), 401, []string{`Basic realm="pharos"`}},
		{"basic: wrong user", restapi.Config{Username: user, Password: pass}, basicAuth("root", pass), 401, []string{`Basic realm="pharos"`}},
		{"basic: password prefix", restapi.Config{Username: user, Password: pass}, basicAuth(user, pass[:5]), 401, []string{`Basic realm="pharos"`}},
		{"basic: bearer sent instead", restapi.Config{Username: user, Password: pass}, bearer(pass), 401, []string{`Basic realm="pharos"`}},
		{"basic: garbage", restapi.Config{Username: user, Password: pass}, http.Header{"Authorization": {"Basic !!!"}}, 401, []string{`Basic realm="pharos"`}},
		{"basic: right", restapi.Config{Username: user, Password: pass}, basicAuth(user, pass), 200, nil},
		{"token: none sent", restapi.Config{Token: token}, nil, 401, []string{`Bearer realm="pharos"`}},
		{"token: wrong", restapi.Config{Token: token}, bearer("s3cret"), 401, []string{`Bearer realm="pharos"`}},
		{"token: basic sent instead", restapi.Config{Token: token}, basicAuth(user, token), 401, []string{`Bearer realm="pharos"`}},
		{"token: right", restapi.Config{Token: token}, bearer(token), 200, nil},
		{"token: scheme in lower case", restapi.Config{Token: token}, http.Header{"Authorization": {"bearer " + token}}, 200, nil},
		{"both: basic passes", restapi.Config{Username: user, Password: pass, Token: token}, basicAuth(user, pass), 200, nil},
		{"both: bearer passes", restapi.Config{Username: user, Password: pass, Token: token}, bearer(token), 200, nil},
		{"both: wrong", restapi.Config{Username: user, Password: pass, Token: token}, bearer(pass), 401,
			[]string{`Basic realm="pharos", charset="UTF-8"`, `Bearer realm="pharos"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, tt.cfg, nil)
			code, hdr, msg := ts.do(t, http.MethodPost, "/switchover", body, tt.hdr)
			if code != tt.wantCode {
				t.Fatalf("POST /switchover = %d %q, want %d", code, msg, tt.wantCode)
			}
			calls := ts.Backend.takeCalls()
			if code != http.StatusOK {
				if len(calls) != 0 {
					t.Errorf("refused call reached the backend: %v", calls)
				}
				got := hdr.Values("WWW-Authenticate")
				if len(got) != len(tt.challenge) {
					t.Fatalf("WWW-Authenticate = %q, want %q", got, tt.challenge)
				}
				for i := range got {
					if !strings.HasPrefix(got[i], tt.challenge[i]) {
						t.Errorf("WWW-Authenticate = %q, want %q", got, tt.challenge)
					}
				}
			} else if len(calls) != 1 || calls[0].op != "switchover" || calls[0].req.Leader != "n1" || calls[0].req.Candidate != "n2" {
				t.Errorf("backend calls %v, want one switchover n1 → n2", calls)
			}
			logs := ts.logs.String()
			for _, secret := range []string{pass, token, "s3cret"} {
				if strings.Contains(logs, secret) {
					t.Errorf("a secret is in the log:\n%s", logs)
				}
			}
		})
	}
}

func TestMutations(t *testing.T) {
	future := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	past := time.Now().Add(-time.Hour).UTC()
	ts := startServer(t, restapi.Config{Token: "tok"}, nil)
	auth := bearer("tok")
	tests := []struct {
		name     string
		path     string
		body     string
		err      error
		wantCode int
		wantBody string
		wantCall *call
	}{
		{name: "switchover to a candidate", path: "/switchover", body: `{"leader":"n1","candidate":"n2"}`,
			wantCode: 200, wantBody: `Successfully switched over to "n2"`,
			wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n1", Candidate: "n2"}}},
		{name: "switchover to any replica", path: "/switchover", body: `{"leader":"n1"}`,
			wantCode: 200, wantBody: "Successfully switched over",
			wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n1"}}},
		{name: "switchover with member, Patroni's older field", path: "/switchover", body: `{"leader":"n1","member":"n3"}`,
			wantCode: 200, wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n1", Candidate: "n3"}}},
		{name: "switchover ignores unknown fields", path: "/switchover", body: `{"leader":"n1","candidate":"n2","force":true}`,
			wantCode: 200, wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n1", Candidate: "n2"}}},
		{name: "scheduled switchover", path: "/switchover",
			body:     fmt.Sprintf(`{"leader":"n1","candidate":"n2","scheduled_at":%q}`, future.Format(time.RFC3339)),
			wantCode: 202, wantBody: "Switchover scheduled",
			wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n1", Candidate: "n2", ScheduledAt: &future}}},
		{name: "scheduled switchover, Patroni's short form", path: "/switchover",
			body:     fmt.Sprintf(`{"leader":"n1","scheduled_at":%q}`, future.Format("2006-01-02T15:04Z07")),
			wantCode: 202, wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n1", ScheduledAt: ptr(future.Truncate(time.Minute))}}},
		{name: "scheduled in the past", path: "/switchover",
			body:     fmt.Sprintf(`{"leader":"n1","scheduled_at":%q}`, past.Format(time.RFC3339)),
			wantCode: 422, wantBody: "in the past"},
		{name: "scheduled without a time zone", path: "/switchover", body: `{"leader":"n1","scheduled_at":"2099-01-01T10:00:00"}`,
			wantCode: 400, wantBody: "Timezone information is mandatory"},
		{name: "scheduled at nonsense", path: "/switchover", body: `{"leader":"n1","scheduled_at":"tomorrow"}`,
			wantCode: 422, wantBody: "Unable to parse"},
		{name: "switchover without leader", path: "/switchover", body: `{"candidate":"n2"}`,
			wantCode: 400, wantBody: "only from a specific leader"},
		{name: "switchover to itself", path: "/switchover", body: `{"leader":"n1","candidate":"n1"}`,
			wantCode: 400, wantBody: "same"},
		{name: "switchover with a bad member name", path: "/switchover", body: `{"leader":"n1","candidate":"../etc"}`,
			wantCode: 400, wantBody: "not a member name"},
		{name: "switchover with no body", path: "/switchover", wantCode: 400, wantBody: "JSON object"},
		{name: "switchover with bad JSON", path: "/switchover", body: `{"leader":`, wantCode: 400, wantBody: "JSON"},
		{name: "switchover with an array", path: "/switchover", body: `["n1"]`, wantCode: 400, wantBody: "JSON object"},
		{name: "switchover with trailing data", path: "/switchover", body: `{"leader":"n1"} {}`, wantCode: 400, wantBody: "after"},
		{name: "switchover with a name of the wrong type", path: "/switchover", body: `{"leader":1}`, wantCode: 400},
		{name: "switchover not possible", path: "/switchover", body: `{"leader":"n1"}`,
			err: fmt.Errorf("no healthy candidate: %w", restapi.ErrConflict), wantCode: 412, wantBody: "no healthy candidate",
			wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n1"}}},
		{name: "switchover from a member not leading", path: "/switchover", body: `{"leader":"n9"}`,
			err: fmt.Errorf("leader name does not match: %w", restapi.ErrBadRequest), wantCode: 400, wantBody: "does not match",
			wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n9"}}},
		{name: "switchover fails", path: "/switchover", body: `{"leader":"n1"}`,
			err: errors.New("etcd unreachable"), wantCode: 503, wantBody: "etcd unreachable",
			wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n1"}}},
		{name: "failover", path: "/failover", body: `{"candidate":"n2"}`,
			wantCode: 200, wantBody: `Successfully failed over to "n2"`,
			wantCall: &call{"failover", restapi.SwitchoverRequest{Candidate: "n2"}}},
		{name: "failover without candidate", path: "/failover", body: `{}`,
			wantCode: 400, wantBody: "only to a specific candidate"},
		{name: "failover cannot be scheduled", path: "/failover",
			body:     fmt.Sprintf(`{"candidate":"n2","scheduled_at":%q}`, future.Format(time.RFC3339)),
			wantCode: 400, wantBody: "can't be scheduled"},
		{name: "failover naming the leader cannot be scheduled either", path: "/failover",
			body:     fmt.Sprintf(`{"leader":"n1","candidate":"n2","scheduled_at":%q}`, future.Format(time.RFC3339)),
			wantCode: 400, wantBody: "can't be scheduled"},
		{name: "failover naming the leader is a switchover", path: "/failover", body: `{"leader":"n1","candidate":"n2"}`,
			wantCode: 200, wantCall: &call{"switchover", restapi.SwitchoverRequest{Leader: "n1", Candidate: "n2"}}},
		{name: "failover not possible", path: "/failover", body: `{"candidate":"n2"}`,
			err: fmt.Errorf("candidate does not exist: %w", restapi.ErrConflict), wantCode: 412,
			wantCall: &call{"failover", restapi.SwitchoverRequest{Candidate: "n2"}}},
		{name: "restart", path: "/restart", wantCode: 200, wantBody: "restarted", wantCall: &call{op: "restart"}},
		{name: "restart with {}", path: "/restart", body: `{}`, wantCode: 200, wantCall: &call{op: "restart"}},
		{name: "restart with options", path: "/restart", body: `{"schedule":"2099-01-01T00:00:00Z","role":"primary"}`,
			wantCode: 400, wantBody: "restart takes no options, got: role, schedule"},
		{name: "restart in progress", path: "/restart", err: fmt.Errorf("restart in progress: %w", restapi.ErrConflict),
			wantCode: 409, wantCall: &call{op: "restart"}},
		{name: "restart fails", path: "/restart", err: errors.New("pg_ctl failed"), wantCode: 503, wantBody: "pg_ctl failed",
			wantCall: &call{op: "restart"}},
		{name: "reinitialize", path: "/reinitialize", body: "null", wantCode: 200, wantBody: "reinitialize started",
			wantCall: &call{op: "reinitialize"}},
		{name: "reinitialize with force", path: "/reinitialize", body: `{"force":true}`, wantCode: 400, wantBody: "force"},
		{name: "reinitialize on the leader", path: "/reinitialize",
			err: fmt.Errorf("the leader cannot be reinitialized: %w", restapi.ErrBadRequest), wantCode: 400,
			wantCall: &call{op: "reinitialize"}},
		{name: "reinitialize conflict", path: "/reinitialize", err: fmt.Errorf("busy: %w", restapi.ErrConflict), wantCode: 409,
			wantCall: &call{op: "reinitialize"}},
		{name: "body too large", path: "/restart", body: `{"x":"` + strings.Repeat("a", 70<<10) + `"}`, wantCode: 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts.Backend.setErr(tt.err)
			code, _, body := ts.do(t, http.MethodPost, tt.path, tt.body, auth)
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("POST %s = %d %q, want %d containing %q", tt.path, code, body, tt.wantCode, tt.wantBody)
			}
			calls := ts.Backend.takeCalls()
			if tt.wantCall == nil {
				if len(calls) != 0 {
					t.Errorf("backend called: %v", calls)
				}
				return
			}
			if len(calls) != 1 || !sameCall(calls[0], *tt.wantCall) {
				t.Errorf("backend calls %+v, want %+v", calls, *tt.wantCall)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func sameCall(a, b call) bool {
	if a.op != b.op || a.req.Leader != b.req.Leader || a.req.Candidate != b.req.Candidate {
		return false
	}
	if (a.req.ScheduledAt == nil) != (b.req.ScheduledAt == nil) {
		return false
	}
	return a.req.ScheduledAt == nil || a.req.ScheduledAt.Equal(*b.req.ScheduledAt)
}

func TestNewValidates(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir)
	tests := []struct {
		name    string
		cfg     restapi.Config
		nilB    bool
		wantErr string
	}{
		{name: "minimal", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second}},
		{name: "TLS", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second, CertFile: certFile, KeyFile: keyFile}},
		{name: "no backend", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second}, nilB: true, wantErr: "no backend"},
		{name: "no listen address", cfg: restapi.Config{LoopStale: time.Second}, wantErr: "listen address"},
		{name: "user without password", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second, Username: "u"}, wantErr: "together"},
		{name: "password without user", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second, Password: "p"}, wantErr: "together"},
		{name: "user with a colon", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second, Username: "a:b", Password: "p"}, wantErr: "':'"},
		{name: "token with spaces", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second, Token: " t"}, wantErr: "white space"},
		{name: "no liveness threshold", cfg: restapi.Config{Listen: ":0"}, wantErr: "LoopStale"},
		{name: "certificate without key", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second, CertFile: certFile}, wantErr: "together"},
		{name: "unreadable certificate", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second,
			CertFile: filepath.Join(dir, "missing.pem"), KeyFile: keyFile}, wantErr: "certificate"},
		{name: "key does not match", cfg: restapi.Config{Listen: ":0", LoopStale: time.Second,
			CertFile: certFile, KeyFile: certFile}, wantErr: "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b restapi.Backend = &fakeBackend{}
			if tt.nilB {
				b = nil
			}
			_, err := restapi.New(tt.cfg, b, nil)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestListenTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv, err := restapi.New(restapi.Config{Listen: ln.Addr().String(), LoopStale: time.Second}, &fakeBackend{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(t.Context()); err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Serve on a taken port = %v", err)
	}
	if srv.Addr() != "" {
		t.Errorf("Addr() = %q after a failed Listen", srv.Addr())
	}
}

// TestShutdownFinishesRequests: a call in progress when the context ends
// gets its answer, and Serve returns after it.
func TestShutdownFinishesRequests(t *testing.T) {
	b := &fakeBackend{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	ts := startServer(t, restapi.Config{Token: "tok"}, b)
	type result struct {
		code int
		body string
	}
	res := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, ts.URL+"/restart", nil)
		req.Header.Set("Authorization", "Bearer tok")
		req.Header.Set("Content-Type", "application/json")
		resp, err := ts.Client.Do(req)
		if err != nil {
			res <- result{0, err.Error()}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		res <- result{resp.StatusCode, string(body)}
	}()
	// Wait until the restart is inside the backend.
	select {
	case <-b.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("restart request never reached the backend")
	}
	ts.stop()
	time.Sleep(100 * time.Millisecond)
	close(b.block)
	r := <-res
	if r.code != http.StatusOK {
		t.Errorf("restart in flight at shutdown = %d %q, want 200", r.code, r.body)
	}
	ts.Stop(t)
	if calls := b.takeCalls(); len(calls) != 1 {
		t.Errorf("backend calls %v", calls)
	}
	// The server no longer accepts.
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(ts.URL, "http://"), time.Second); err == nil {
		t.Errorf("server still accepting after Serve returned")
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir)
	b := &fakeBackend{}
	b.set(primaryStatus(time.Now()))
	srv, err := restapi.New(restapi.Config{Listen: "127.0.0.1:0", LoopStale: time.Minute, CertFile: certFile, KeyFile: keyFile}, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	pemCert, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemCert)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{RootCAs: roots},
	}}
	for _, m := range []string{http.MethodGet, http.MethodOptions} {
		req, _ := http.NewRequest(m, "https://"+srv.Addr()+"/primary", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s over https: %v", m, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.TLS == nil {
			t.Errorf("%s https://%s/primary = %d (TLS %v)", m, srv.Addr(), resp.StatusCode, resp.TLS != nil)
		}
	}
	// Plain HTTP to the HTTPS port is not served.
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := plain.Get("http://" + srv.Addr() + "/primary"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP answered 200 on the HTTPS port")
		}
	}
}

// writeSelfSigned writes pglocal's self-signed certificate for 127.0.0.1
// and its key as PEM files in dir.
func writeSelfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := pglocal.SelfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestClusterViewNeedsCredentialsForParameters: GET /cluster tells the
// backend whether the caller authenticated, so that the dynamic
// configuration's parameters (archive_command secrets) stay out of an
// anonymous answer; wrong credentials are refused rather than downgraded.
func TestClusterViewNeedsCredentialsForParameters(t *testing.T) {
	const user, pass, token = "admin", "s3cret-basic-pw", "s3cret-bearer-token"
	ts := startServer(t, restapi.Config{Username: user, Password: pass, Token: token}, &fakeBackend{view: map[string]any{"members": []string{"n1"}}})
	for _, tt := range []struct {
		name     string
		hdr      http.Header
		wantCode int
		wantAuth []bool
	}{
		{"no credentials", nil, http.StatusOK, []bool{false}},
		{"basic auth", basicAuth(user, pass), http.StatusOK, []bool{true}},
		{"bearer token", bearer(token), http.StatusOK, []bool{true}},
		{"wrong password", basicAuth(user, "nope"), http.StatusUnauthorized, nil},
		{"wrong token", bearer("nope"), http.StatusUnauthorized, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, body := ts.do(t, http.MethodGet, "/cluster", "", tt.hdr)
			if code != tt.wantCode {
				t.Fatalf("GET /cluster = %d %q, want %d", code, body, tt.wantCode)
			}
			if got := ts.Backend.takeClusterAuth(); !slices.Equal(got, tt.wantAuth) {
				t.Errorf("backend told authenticated = %v, want %v", got, tt.wantAuth)
			}
			if code == http.StatusOK && !strings.Contains(hdr.Get("Vary"), "Authorization") {
				t.Errorf("Vary = %q: a cache could hand the authenticated view to anyone", hdr.Get("Vary"))
			}
		})
	}
	t.Run("no credentials configured", func(t *testing.T) {
		open := startServer(t, restapi.Config{}, nil)
		if code, _, body := open.do(t, http.MethodGet, "/cluster", "", basicAuth(user, pass)); code != http.StatusOK {
			t.Fatalf("GET /cluster = %d %q", code, body)
		}
		if got := open.Backend.takeClusterAuth(); !slices.Equal(got, []bool{false}) {
			t.Errorf("backend told authenticated = %v with no credentials configured", got)
		}
	})
}

// TestMutationsRefuseWhatABrowserPageCanSend: an operator call needs
// Content-Type: application/json, which an HTML form cannot send (415),
// and is refused when the browser marks it cross-origin (403), even with
// valid credentials the browser remembered; what operators' tools send
// still passes.
func TestMutationsRefuseWhatABrowserPageCanSend(t *testing.T) {
	const token = "s3cret-bearer-token"
	ts := startServer(t, restapi.Config{Token: token}, nil)
	with := func(kv ...string) http.Header {
		h := bearer(token)
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "<none>" {
				h[kv[i]] = nil
				continue
			}
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	host := strings.TrimPrefix(ts.URL, "http://")
	for _, tt := range []struct {
		name     string
		hdr      http.Header
		wantCode int
		wantMsg  string
	}{
		{"no Content-Type", with("Content-Type", "<none>"), http.StatusUnsupportedMediaType, `Content-Type ""`},
		{"a form", with("Content-Type", "application/x-www-form-urlencoded"), http.StatusUnsupportedMediaType, "application/x-www-form-urlencoded"},
		{"a multipart form", with("Content-Type", "multipart/form-data; boundary=x"), http.StatusUnsupportedMediaType, "multipart/form-data"},
		{"text/plain", with("Content-Type", "text/plain"), http.StatusUnsupportedMediaType, "text/plain"},
		{"JSON-looking but not JSON", with("Content-Type", "application/json-seq"), http.StatusUnsupportedMediaType, "application/json-seq"},
		{"cross-site", with("Sec-Fetch-Site", "cross-site"), http.StatusForbidden, `Sec-Fetch-Site "cross-site"`},
		{"cross-site form", with("Sec-Fetch-Site", "cross-site", "Content-Type", "text/plain"), http.StatusForbidden, "cross-origin"},
		{"same-site (another port of the same host)", with("Sec-Fetch-Site", "same-site"), http.StatusForbidden, "cross-origin"},
		{"another origin, no Sec-Fetch-Site", with("Origin", "http://evil.example"), http.StatusForbidden, "cross-origin"},
		{"JSON", with(), http.StatusOK, ""},
		{"JSON with a charset, in capitals", with("Content-Type", "Application/JSON; charset=utf-8"), http.StatusOK, ""},
		{"same-origin", with("Sec-Fetch-Site", "same-origin"), http.StatusOK, ""},
		{"typed into the address bar", with("Sec-Fetch-Site", "none"), http.StatusOK, ""},
		{"its own origin", with("Origin", "http://"+host), http.StatusOK, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, msg := ts.do(t, http.MethodPost, "/restart", "", tt.hdr)
			if code != tt.wantCode || !strings.Contains(msg, tt.wantMsg) {
				t.Fatalf("POST /restart = %d %q, want %d with %q", code, msg, tt.wantCode, tt.wantMsg)
			}
			calls := ts.Backend.takeCalls()
			if code != http.StatusOK && len(calls) != 0 {
				t.Errorf("refused call reached the backend: %v", calls)
			}
			if code == http.StatusOK && len(calls) != 1 {
				t.Errorf("backend calls %v, want one restart", calls)
			}
			if code == http.StatusUnsupportedMediaType && hdr.Get("Accept-Post") != "application/json" {
				t.Errorf("Accept-Post = %q", hdr.Get("Accept-Post"))
			}
		})
	}
	t.Run("cross-site without credentials is refused before the challenge", func(t *testing.T) {
		code, hdr, _ := ts.do(t, http.MethodPost, "/switchover", `{"leader":"n1"}`, http.Header{"Sec-Fetch-Site": {"cross-site"}})
		if code != http.StatusForbidden || hdr.Get("WWW-Authenticate") != "" {
			t.Errorf("POST = %d, WWW-Authenticate %q; want 403 without a challenge a browser would answer", code, hdr.Get("WWW-Authenticate"))
		}
	})
	t.Run("wrong credentials are 401 before the content type", func(t *testing.T) {
		if code, _, _ := ts.do(t, http.MethodPost, "/restart", "", http.Header{"Content-Type": nil}); code != http.StatusUnauthorized {
			t.Errorf("POST without credentials or Content-Type = %d, want 401", code)
		}
	})
}
