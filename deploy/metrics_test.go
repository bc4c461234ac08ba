package deploy_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/freeport"
	"github.com/pharos-ha/pharos/internal/localha"
	"github.com/pharos-ha/pharos/metrics"
)

// queriedMetrics returns every metric name the dashboard and the alert
// rules query, with where each is used.
func queriedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	add := func(where, expr string) {
		names, err := metricNames(expr)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		for _, n := range names {
			used[n] = append(used[n], where)
		}
	}
	for where, expr := range loadDashboard(t).queries(t) {
		add(dashboard+" "+where, expr)
	}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			add(promRules+" "+r.Alert+r.Record, r.Expr)
		}
	}
	return used
}

// Metrics a query may name that no live scrape of a healthy one-node
// cluster shows, each with the reason and the principled substitute check.
var (
	// synthetic: Prometheus itself writes `up` for every target it scrapes;
	// no exporter serves it.
	synthetic = map[string]bool{"up": true}
	// notLiveYet: vectors whose children appear only with an event or a
	// member a healthy one-node cluster does not have, since client_golang
	// prints nothing (not even # HELP/# TYPE) for a vector without a child.
	// Provoking them would mean breaking the agent or adding nodes. For
	// these the name is checked instead against what metrics.NewAgent and
	// metrics.NewProxy (with RegisterEtcd) register, the constructors
	// `pharos agent` and `pharos proxy` call: a registered collector
	// describes its family whether or not it has children. Each entry says
	// why it cannot be live here. (promotions_total needs no entry: the
	// agent creates a child per reason at start.)
	notLiveYet = map[string]string{
		"pharos_agent_action_failures_total": "a child appears with the first failed plan step",
		"pharos_backend_lag_bytes":           "only replicas have a lag (the primary's series is deleted), and one node has none",
	}
)

// TestMetricsExistLive: every metric name the dashboard and the alert rules
// query is exported by a real `pharos agent` (its REST API's /metrics) and a
// real `pharos proxy` (its metrics listener) running a one-node cluster on
// an embedded etcd, or by that etcd (etcd_* names). Label-vector families
// appear only once observed, so the test first opens sessions on both
// endpoints, forwards a CancelRequest and has the proxy cut a session that
// sends an oversized message. Histograms are matched by family
// (x_bucket/_sum/_count → x).
func TestMetricsExistLive(t *testing.T) {
	used := queriedMetrics(t)
	if testing.Short() {
		t.Skip("-short: no live cluster")
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pharos-deploy-")
	if err != nil {
		t.Fatal(err)
	}
	// PostgreSQL runs as the postgres user when we are root: it must reach
	// the node directories.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	bin, err := localha.BuildPharos(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{Dir: filepath.Join(dir, "etcd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcd.Close() })

	const clusterName = "deploy"
	ha, err := localha.Start(ctx, localha.Options{
		Binary: bin, Dir: filepath.Join(dir, "nodes"), Nodes: 1, Cluster: clusterName,
		Etcd: etcd.Endpoints(), RestartDelay: -1,
		// The software watchdog, so the leader arms one (never a device:
		// on a CI machine that has one, it would reset the machine).
		AgentArgs: []string{"--watchdog", "automatic", "--watchdog-driver", "software"},
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	node := ha.Nodes()[0]
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- agent %s (tail):\n%s", node.Name, node.Tail(6000))
		}
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := ha.Close(cctx); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		if b, _ := os.ReadFile(node.LogPath); strings.Contains(string(b), "DATA RACE") {
			t.Errorf("race detector report in the agent's log:\n%s", lastBytes(string(b), 8000))
		}
	})

	httpc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	waitFor(t, 90*time.Second, "the agent to bootstrap and run as primary", func() error {
		resp, err := httpc.Get(node.APIURL + "/primary")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /primary: %s", resp.Status)
		}
		return nil
	})

	ports, err := freeport.Distinct(3)
	if err != nil {
		t.Fatal(err)
	}
	rw, ro, metricsAddr := addr(ports[0]), addr(ports[1]), addr(ports[2])
	startProxy(t, filepath.Join(dir, "proxy.log"), bin, "--source", "pharos",
		"--etcd", strings.Join(etcd.Endpoints(), ","), "--cluster", clusterName,
		"--rw-listen", rw, "--ro-listen", ro, "--metrics-listen", metricsAddr,
		// One node: ro sessions go to the primary.
		"--ro-fallback-to-primary=true",
		// Small, so that one oversized query makes the proxy cut a session.
		"--max-message-size", "1kB",
		"--route-wait", "10s", "--drain-timeout", "1s")

	// Sessions through both endpoints, a CancelRequest, and a session cut.
	dsn := func(hostport string) string {
		return fmt.Sprintf("postgres://%s:%s@%s/postgres?sslmode=disable&connect_timeout=3", ha.SuperUser, ha.SuperPassword, hostport)
	}
	var rwConn *pgx.Conn
	waitFor(t, 30*time.Second, "a session through the proxy's rw endpoint", func() error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := pgx.Connect(cctx, dsn(rw))
		if err != nil {
			return err
		}
		rwConn = c
		return nil
	})
	qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	defer rwConn.Close(context.WithoutCancel(qctx))
	var one int
	if err := rwConn.QueryRow(qctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("rw: %v", err)
	}
	if err := rwConn.PgConn().CancelRequest(qctx); err != nil {
		t.Fatalf("cancel request through the proxy: %v", err)
	}
	roConn, err := pgx.Connect(qctx, dsn(ro))
	if err != nil {
		t.Fatalf("ro: %v", err)
	}
	if err := roConn.QueryRow(qctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("ro: %v", err)
	}
	roConn.Close(qctx)
	bigConn, err := pgx.Connect(qctx, dsn(rw))
	if err != nil {
		t.Fatalf("rw: %v", err)
	}
	if _, err := bigConn.Exec(qctx, "SELECT '"+strings.Repeat("x", 4096)+"'"); err == nil {
		t.Fatal("a 4kB query went through a proxy with max_message_size 1kB")
	}
	bigConn.Close(qctx)

	var agentFams, proxyFams, etcdFams map[string]string
	waitFor(t, 15*time.Second, "the proxy's metrics to show the sessions, the cancel and the cut", func() error {
		var err error
		if proxyFams, err = scrape(httpc, "http://"+metricsAddr+"/metrics"); err != nil {
			return err
		}
		for _, f := range []string{"pharos_proxy_sessions_total", "pharos_proxy_cancel_requests_total", "pharos_proxy_sessions_terminated_total"} {
			if _, ok := proxyFams[f]; !ok {
				return fmt.Errorf("no %s yet", f)
			}
		}
		return nil
	})
	if agentFams, err = scrape(httpc, node.APIURL+"/metrics"); err != nil {
		t.Fatal(err)
	}
	if etcdFams, err = scrape(httpc, etcd.Endpoints()[0]+"/metrics"); err != nil {
		t.Fatal(err)
	}
	registered := registeredFamilies()

	names := make([]string, 0, len(used))
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		var sources map[string]map[string]string
		switch {
		case synthetic[name]:
			continue
		case strings.HasPrefix(name, "pharos_agent_"):
			sources = map[string]map[string]string{"agent": agentFams}
		case strings.HasPrefix(name, "pharos_"):
			sources = map[string]map[string]string{"proxy": proxyFams}
		case strings.HasPrefix(name, "etcd_"):
			sources = map[string]map[string]string{"etcd": etcdFams}
		default:
			sources = map[string]map[string]string{"agent": agentFams, "proxy": proxyFams}
		}
		found := false
		for _, fams := range sources {
			found = found || exported(name, fams)
		}
		if reason, ok := notLiveYet[name]; ok && !found {
			if !registered[name] {
				t.Errorf("%s (used by %s): not exported live (%s) and not registered by metrics.NewAgent or NewProxy either",
					name, strings.Join(used[name], ", "), reason)
			} else {
				t.Logf("%s: not live here (%s); registered by the daemons' metrics constructors", name, reason)
			}
			continue
		}
		if !found {
			var where []string
			for s := range sources {
				where = append(where, s)
			}
			slices.Sort(where)
			t.Errorf("%s (used by %s) is not exported by the live %s", name, strings.Join(used[name], ", "), strings.Join(where, " or "))
		}
	}
	t.Logf("%d metric names checked against live /metrics of the agent (%d families), the proxy (%d) and etcd (%d)",
		len(names), len(agentFams), len(proxyFams), len(etcdFams))
}

// exported reports whether name is a family of the scrape, or a series of
// a histogram (or summary) family there.
func exported(name string, fams map[string]string) bool {
	if _, ok := fams[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if typ := fams[base]; typ == "histogram" || (typ == "summary" && suffix != "_bucket") {
				return true
			}
		}
	}
	return false
}

// scrape reads a /metrics page and returns its families (the # TYPE
// lines) with their types.
func scrape(c *http.Client, url string) (map[string]string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	fams := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			fams[f[2]] = f[3]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if len(fams) == 0 {
		return nil, fmt.Errorf("GET %s: no metric families", url)
	}
	return fams, nil
}

// registeredFamilies returns the family names the agent's and the
// proxy's metrics constructors register, from their descriptors.
func registeredFamilies() map[string]bool {
	reg := &describeRegistry{names: map[string]bool{}}
	metrics.NewAgent(reg)
	metrics.NewProxy(reg).RegisterEtcd(reg)
	return reg.names
}

// describeRegistry is a prometheus.Registerer that records the family names
// of what is registered on it.
type describeRegistry struct{ names map[string]bool }

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *describeRegistry) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqNameRE.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return nil
}

func (r *describeRegistry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *describeRegistry) Unregister(prometheus.Collector) bool { return false }

// startProxy runs `pharos proxy` until the test ends (SIGTERM, then SIGKILL
// after 10 s), with its output in logPath.
func startProxy(t *testing.T, logPath, bin string, args ...string) {
	t.Helper()
	p, err := localha.StartProxy(bin, logPath, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "DATA RACE") {
			t.Errorf("race detector report in the proxy's log:\n%s", lastBytes(string(b), 8000))
		}
		if t.Failed() {
			t.Logf("--- proxy:\n%s", lastBytes(string(b), 4000))
		}
	})
}

// waitFor retries f every 100 ms until it succeeds, failing the test with
// its last error after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s: %v", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
