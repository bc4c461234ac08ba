// Package deploy_test checks what an operator installs from deploy/: the
// Prometheus scrape config and alert rules (with promtool, and their rule
// unit tests), that every metric the dashboard and the alerts query exists
// on a live agent and proxy (metrics_test.go), the Grafana dashboard's
// shape, the etcd config files (with etcd's own config loader), the systemd
// units and how the files fit together (the same addresses, ports, cluster
// name and paths everywhere). The agent and proxy examples are loaded by the
// real config parsers in cmd/pharos/deploy_examples_test.go.
package deploy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/pharos-ha/pharos/internal/pglocal"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Paths, relative to this package's directory (go test's working
// directory).
const (
	promConfig   = "prometheus/prometheus.yml"
	promRules    = "prometheus/pharos-alerts.yml"
	promTests    = "prometheus/pharos-alerts_test.yml"
	dashboard    = "grafana/pharos.json"
	agentUnit    = "systemd/pharos-agent.service"
	proxyUnit    = "systemd/pharos-proxy.service"
	udevRule     = "udev/99-pharos-watchdog.rules"
	examplesDir  = "examples"
	cmdTimeout   = 3 * time.Minute  // promtool test rules takes over a minute on 2 loaded cores
	unitStopWait = 65 * time.Second // the agent's own bound on a clean stop, see below
)

// findPromtool returns promtool. It skips the test only when promtool is
// absent and we are not root; as root (CI) scripts/ensure-deps.sh installs
// it (Debian's prometheus package), so its absence is a failure.
func findPromtool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/promtool", "/usr/local/bin/promtool"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Geteuid() == 0 {
		t.Fatal("promtool is not installed; run `bash scripts/ensure-deps.sh` (as root it installs Debian's prometheus package, which has it)")
	}
	t.Skip("promtool is not installed and we are not root: skipping the promtool checks " +
		"(install it with `sudo bash scripts/ensure-deps.sh`)")
	return ""
}

// run runs a command with a bound and returns its combined output.
func run(t *testing.T, dir, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestPromtoolCheckConfig: prometheus.yml is a valid Prometheus config,
// and the rule file it names loads. It runs on a copy whose /etc/prometheus
// paths point at files that exist, because promtool checks that the TLS
// files it names are there.
func TestPromtoolCheckConfig(t *testing.T) {
	promtool := findPromtool(t)
	dir := t.TempDir()
	cfg := readFile(t, promConfig)
	fake := filepath.Join(dir, "etc")
	if err := os.MkdirAll(fake, 0o755); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := testCert(t)
	files := regexp.MustCompile(`(?m)^(\s*(?:ca_file|cert_file|key_file|password_file|bearer_token_file|credentials_file):\s*)(\S+)\s*$`)
	cfg = files.ReplaceAllStringFunc(cfg, func(line string) string {
		m := files.FindStringSubmatch(line)
		content := certPEM
		if strings.Contains(m[1], "key_file") {
			content = keyPEM
		}
		path := filepath.Join(fake, filepath.Base(m[2]))
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		return m[1] + path
	})
	writeFile(t, filepath.Join(dir, "prometheus.yml"), cfg)
	writeFile(t, filepath.Join(dir, "pharos-alerts.yml"), readFile(t, promRules))
	out, err := run(t, dir, promtool, "check", "config", "--lint=all", "--lint-fatal", "prometheus.yml")
	if err != nil || !strings.Contains(out, "1 rule files found") {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	t.Logf("promtool check config:\n%s", out)
}

// TestPromtoolCheckRules: the alert rules parse, their PromQL is valid and
// no rule is a duplicate.
func TestPromtoolCheckRules(t *testing.T) {
	promtool := findPromtool(t)
	out, err := run(t, ".", promtool, "check", "rules", "--lint=all", "--lint-fatal", promRules)
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// TestPromtoolTestRules runs the rule unit tests: every alert fires on its
// bad series with the labels and annotations written there, and stays
// quiet on the healthy ones.
func TestPromtoolTestRules(t *testing.T) {
	promtool := findPromtool(t)
	out, err := run(t, filepath.Dir(promTests), promtool, "test", "rules", filepath.Base(promTests))
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := yaml.Unmarshal([]byte(readFile(t, promRules)), &rf); err != nil {
		t.Fatalf("%s: %v", promRules, err)
	}
	return rf
}

// TestAlertsAreTested: every alert has a severity an Alertmanager can route
// on, a summary and a description, and the unit tests show it both firing
// (some test expects it) and quiet (some test expects no alert of it).
func TestAlertsAreTested(t *testing.T) {
	var tests struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, promTests)), &tests); err != nil {
		t.Fatalf("%s: %v", promTests, err)
	}
	if !slices.Equal(tests.RuleFiles, []string{filepath.Base(promRules)}) {
		t.Errorf("%s tests %v, want %s", promTests, tests.RuleFiles, filepath.Base(promRules))
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tg := range tests.Tests {
		for _, at := range tg.AlertRuleTest {
			if len(at.ExpAlerts) > 0 {
				fires[at.Alertname] = true
			} else {
				quiet[at.Alertname] = true
			}
		}
	}
	alerts := map[string]bool{}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts[r.Alert] = true
			if s := r.Labels["severity"]; !slices.Contains([]string{"critical", "warning", "info"}, s) {
				t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description", r.Alert)
			}
			if !fires[r.Alert] {
				t.Errorf("%s: no unit test shows it firing on a bad series", r.Alert)
			}
			if !quiet[r.Alert] {
				t.Errorf("%s: no unit test shows it quiet on a healthy series", r.Alert)
			}
		}
	}
	for name := range fires {
		if !alerts[name] {
			t.Errorf("%s tests alert %s, which %s does not define", promTests, name, promRules)
		}
	}
	if len(alerts) < 20 {
		t.Errorf("only %d alerts in %s", len(alerts), promRules)
	}
}

// grafanaDashboard is the part of the dashboard JSON the tests read.
type grafanaDashboard struct {
	Title       string `json:"title"`
	UID         string `json:"uid"`
	Annotations struct {
		List []struct {
			Datasource *grafanaDS `json:"datasource"`
			Expr       string     `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *grafanaDS      `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaDS struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type grafanaPanel struct {
	ID         int        `json:"id"`
	Type       string     `json:"type"`
	Title      string     `json:"title"`
	Datasource *grafanaDS `json:"datasource"`
	GridPos    struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string     `json:"refId"`
		Expr       string     `json:"expr"`
		Datasource *grafanaDS `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	var d grafanaDashboard
	dec := json.NewDecoder(strings.NewReader(readFile(t, dashboard)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboard, err)
	}
	return d
}

// allPanels flattens rows.
func (d grafanaDashboard) allPanels() []grafanaPanel {
	var out []grafanaPanel
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// labelValuesRE is Grafana's label_values(metric, label) variable query.
var labelValuesRE = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)

// queries returns every PromQL expression of the dashboard (panels,
// annotations, the metric of label_values variables), by where it is.
func (d grafanaDashboard) queries(t *testing.T) map[string]string {
	t.Helper()
	q := map[string]string{}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			q[fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)] = tg.Expr
		}
	}
	for i, a := range d.Annotations.List {
		if a.Expr != "" {
			q[fmt.Sprintf("annotation %d", i)] = a.Expr
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var query struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &query); err != nil {
			t.Fatalf("variable %s: query: %v", v.Name, err)
		}
		m := labelValuesRE.FindStringSubmatch(query.Query)
		if m == nil {
			t.Fatalf("variable %s: %q is not label_values(metric, label)", v.Name, query.Query)
		}
		q["variable "+v.Name] = m[1]
	}
	return q
}

// TestDashboard: the dashboard is importable as it is: a Prometheus
// datasource variable that every panel and query uses (no datasource UID
// of the machine it was made on), unique panel ids, panels inside the
// 24-column grid, every query valid enough to name its metrics, and the
// panels the brief asks for.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: both needed for a stable import", d.Title, d.UID)
	}
	var haveDS, haveCluster bool
	for _, v := range d.Templating.List {
		switch v.Name {
		case "datasource":
			var q string
			haveDS = v.Type == "datasource" && json.Unmarshal(v.Query, &q) == nil && q == "prometheus"
		case "cluster":
			haveCluster = v.Type == "query" && v.Datasource != nil && v.Datasource.UID == "${datasource}"
		}
	}
	if !haveDS {
		t.Error(`no "datasource" variable of type datasource querying prometheus`)
	}
	if !haveCluster {
		t.Error(`no "cluster" query variable on ${datasource}`)
	}
	isVar := func(ds *grafanaDS) bool { return ds != nil && ds.Type == "prometheus" && ds.UID == "${datasource}" }
	ids := map[int]bool{}
	var titles []string
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		titles = append(titles, p.Title)
		if !isVar(p.Datasource) {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if !isVar(tg.Datasource) || tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q target %q: needs the ${datasource} variable, an expr and a unique refId", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if !strings.Contains(tg.Expr, `$cluster`) && !strings.Contains(tg.Expr, `job="etcd"`) {
				t.Errorf("panel %q target %s ignores the cluster variable: %s", p.Title, tg.RefID, tg.Expr)
			}
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" && !isVar(a.Datasource) {
			t.Errorf("annotation %q: datasource %+v, want the ${datasource} variable", a.Expr, a.Datasource)
		}
	}
	for where, expr := range d.queries(t) {
		if _, err := metricNames(expr); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
	// What an operator looks for first, by the metric that shows it.
	names := map[string]bool{}
	for _, expr := range d.queries(t) {
		ns, _ := metricNames(expr)
		for _, n := range ns {
			names[n] = true
		}
	}
	for _, want := range []string{
		"pharos_router_rw_available", "pharos_agent_is_leader", "pharos_agent_role",
		"pharos_agent_replication_lag_bytes", "pharos_router_topology_changes_total",
		"pharos_proxy_clients", "pharos_proxy_sessions_total", "pharos_proxy_bytes_total",
		"pharos_proxy_backend_connect_seconds_bucket", "pharos_agent_promotions_total",
		"pharos_agent_demotions_total", "pharos_agent_watchdog_armed", "pharos_agent_etcd_up",
		"pharos_proxy_etcd_up",
	} {
		if !names[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
	t.Logf("%d panels: %s", len(titles), strings.Join(titles, "; "))
}

// etcdFile mirrors the file format etcd's embed.ConfigFromFile reads
// (embed's unexported configYAML: the Config fields plus the URL lists
// and TLS settings given as strings), so that a strict decode can refuse
// keys etcd would silently ignore.
type etcdFile struct {
	embed.Config
	ListenPeerURLs       string       `json:"listen-peer-urls"`
	ListenClientURLs     string       `json:"listen-client-urls"`
	ListenClientHTTPURLs string       `json:"listen-client-http-urls"`
	AdvertisePeerURLs    string       `json:"initial-advertise-peer-urls"`
	AdvertiseClientURLs  string       `json:"advertise-client-urls"`
	CORS                 string       `json:"cors"`
	HostWhitelist        string       `json:"host-whitelist"`
	ClientSecurity       etcdSecurity `json:"client-transport-security"`
	PeerSecurity         etcdSecurity `json:"peer-transport-security"`
	FeatureGates         string       `json:"feature-gates"`
}

type etcdSecurity struct {
	CertFile            string   `json:"cert-file"`
	KeyFile             string   `json:"key-file"`
	ClientCertFile      string   `json:"client-cert-file"`
	ClientKeyFile       string   `json:"client-key-file"`
	CertAuth            bool     `json:"client-cert-auth"`
	TrustedCAFile       string   `json:"trusted-ca-file"`
	AutoTLS             bool     `json:"auto-tls"`
	AllowedCNs          []string `json:"allowed-cn"`
	AllowedHostnames    []string `json:"allowed-hostname"`
	SkipClientSANVerify bool     `json:"skip-client-san-verification,omitempty"`
}

// TestEtcdExamples: each etcd member's config file has only keys etcd
// knows, loads with etcd's own loader and passes its validation; the three
// agree on the cluster they form, run TLS with client certificates on
// both the client and the peer side, and serve metrics where Prometheus
// scrapes them.
func TestEtcdExamples(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(examplesDir, "etcd", "etcd-*.conf.yml"))
	if len(files) != 3 {
		t.Fatalf("want three etcd member configs, have %v", files)
	}
	var clusters []string
	for _, path := range files {
		data := []byte(readFile(t, path))
		var f etcdFile
		if err := k8syaml.UnmarshalStrict(data, &f); err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		cfg, err := embed.ConfigFromFile(path)
		if err != nil {
			t.Errorf("%s: etcd's loader: %v", path, err)
			continue
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: etcd's validation: %v", path, err)
		}
		for side, sec := range map[string]etcdSecurity{"client": f.ClientSecurity, "peer": f.PeerSecurity} {
			if !sec.CertAuth || sec.TrustedCAFile == "" || sec.CertFile == "" || sec.KeyFile == "" {
				t.Errorf("%s: %s-transport-security: want a certificate, a CA and client-cert-auth: %+v", path, side, sec)
			}
		}
		for _, u := range slices.Concat(cfg.ListenClientUrls, cfg.ListenPeerUrls, cfg.AdvertiseClientUrls, cfg.AdvertisePeerUrls) {
			if u.Scheme != "https" {
				t.Errorf("%s: %s is not https", path, u.String())
			}
		}
		// Its own name and peer URL are in initial-cluster.
		self := cfg.Name + "=" + cfg.AdvertisePeerUrls[0].String()
		if !slices.Contains(strings.Split(cfg.InitialCluster, ","), self) {
			t.Errorf("%s: initial-cluster %q lacks %s", path, cfg.InitialCluster, self)
		}
		clusters = append(clusters, cfg.InitialCluster+" "+cfg.InitialClusterToken)
	}
	slices.Sort(clusters)
	if len(slices.Compact(clusters)) != 1 {
		t.Errorf("the members disagree on initial-cluster or its token: %q", clusters)
	}
}

// TestFilesFitTogether: the examples, the scrape config and the units name
// the same things: Prometheus scrapes each agent's api_listen, each
// proxy's metrics_listen and each etcd member's listen-metrics-urls; the
// agents and proxies use the etcd members' client URLs and one cluster
// name; the agent unit may write each agent's data directory; the proxy
// unit's stop timeout covers the proxies' drain_timeout and their ports
// need no capability; the proxies authenticate with scram-sha-256 as the
// auth user the agents create; every secret is a *_file under
// /etc/pharos/secrets.
func TestFilesFitTogether(t *testing.T) {
	agents := loadExamples(t, "agent", "node*.yaml", 3)
	proxies := loadExamples(t, "proxy", "proxy*.yaml", 2)

	var etcdClients, etcdMetrics []string
	for _, path := range mustGlob(t, filepath.Join(examplesDir, "etcd", "etcd-*.conf.yml")) {
		cfg, err := embed.ConfigFromFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range cfg.AdvertiseClientUrls {
			etcdClients = append(etcdClients, u.String())
		}
		if len(cfg.ListenMetricsUrls) == 0 {
			t.Errorf("%s: no listen-metrics-urls for Prometheus to scrape", path)
		}
		for _, u := range cfg.ListenMetricsUrls {
			etcdMetrics = append(etcdMetrics, u.Host)
		}
	}
	slices.Sort(etcdClients)

	targets := scrapeTargets(t)
	var agentAPIs, proxyMetrics []string
	clusters := map[string]bool{}
	for name, a := range agents {
		agentAPIs = append(agentAPIs, str(a, "api_listen"))
		clusters[str(a, "cluster")] = true
		if got := sortedStrings(a["etcd"]); !slices.Equal(got, etcdClients) {
			t.Errorf("%s: etcd %v, want the members' client URLs %v", name, got, etcdClients)
		}
	}
	for name, p := range proxies {
		proxyMetrics = append(proxyMetrics, str(p, "metrics_listen"))
		clusters[str(p, "cluster")] = true
		if got := sortedStrings(p["etcd"]); !slices.Equal(got, etcdClients) {
			t.Errorf("%s: etcd %v, want the members' client URLs %v", name, got, etcdClients)
		}
		if str(p, "source") != "pharos" {
			t.Errorf("%s: source %q, want pharos", name, str(p, "source"))
		}
	}
	if len(clusters) != 1 {
		t.Errorf("the agents and proxies name several clusters: %v", clusters)
	}
	// The proxies authenticate clients themselves, as the login the agents
	// create for them, with the same secret file.
	for pname, p := range proxies {
		if str(p, "auth_type") != "scram-sha-256" {
			t.Errorf("%s: auth_type %q, want scram-sha-256", pname, str(p, "auth_type"))
		}
		for aname, a := range agents {
			if str(p, "auth_user") == "" || str(p, "auth_user") != str(a, "proxy_auth_user") {
				t.Errorf("%s: auth_user %q, but %s creates proxy_auth_user %q", pname, str(p, "auth_user"), aname, str(a, "proxy_auth_user"))
			}
			if str(p, "auth_password_file") == "" || str(p, "auth_password_file") != str(a, "proxy_auth_password_file") {
				t.Errorf("%s: auth_password_file %q, but %s reads proxy_auth_password_file %q", pname, str(p, "auth_password_file"), aname, str(a, "proxy_auth_password_file"))
			}
		}
	}
	for job, want := range map[string][]string{"pharos-agent": agentAPIs, "pharos-proxy": proxyMetrics, "etcd": etcdMetrics} {
		slices.Sort(want)
		if got := targets[job]; !slices.Equal(got, want) {
			t.Errorf("prometheus.yml job %s scrapes %v, want %v", job, got, want)
		}
	}

	// The agent unit may write each data directory (and its parent, where
	// the socket, the passfile and the server log live).
	au := loadUnit(t, agentUnit)
	for name, a := range agents {
		parent := filepath.Dir(str(a, "data_dir"))
		if !slices.ContainsFunc(au.all("Service", "ReadWritePaths"), func(p string) bool { return isUnder(parent, p) }) {
			t.Errorf("%s: data_dir %s: its parent is not under the agent unit's ReadWritePaths %v", name, str(a, "data_dir"), au.all("Service", "ReadWritePaths"))
		}
		if dev := str(a, "watchdog_device"); !slices.Contains(au.all("Service", "DeviceAllow"), dev+" rw") {
			t.Errorf("%s: watchdog_device %s is not in the agent unit's DeviceAllow", name, dev)
		}
	}
	pu := loadUnit(t, proxyUnit)
	stop := unitDuration(t, pu, "TimeoutStopSec")
	for name, p := range proxies {
		drain, err := time.ParseDuration(str(p, "drain_timeout"))
		if err != nil {
			t.Fatalf("%s: drain_timeout: %v", name, err)
		}
		// The proxy drains for drain_timeout, then its metrics listener
		// takes up to 2 s to shut down.
		if stop < drain+5*time.Second {
			t.Errorf("%s: drain_timeout %v does not fit the proxy unit's TimeoutStopSec %v", name, drain, stop)
		}
		for _, key := range []string{"rw_listen", "ro_listen", "metrics_listen"} {
			_, port, err := net.SplitHostPort(str(p, key))
			if err != nil {
				t.Fatalf("%s: %s: %v", name, key, err)
			}
			if n, err := strconv.Atoi(port); err != nil || n < 1024 {
				t.Errorf("%s: %s port %s is below 1024: the unit would need CAP_NET_BIND_SERVICE", name, key, port)
			}
		}
	}

	// Secrets: never inline, always a *_file under /etc/pharos/secrets.
	for name, cfg := range mergeMaps(agents, proxies) {
		for k, v := range cfg {
			s, _ := v.(string)
			switch {
			case strings.HasSuffix(k, "_password") || k == "api_token":
				t.Errorf("%s: %s inline; use %s_file", name, k, k)
			case strings.HasSuffix(k, "_password_file") || k == "api_token_file":
				if !strings.HasPrefix(s, "/etc/pharos/secrets/") {
					t.Errorf("%s: %s %q is not under /etc/pharos/secrets/", name, k, s)
				}
			}
		}
	}
}

// TestSystemdUnits: the choices the unit comments explain are there, and
// systemd itself finds nothing to complain about (systemd-analyze verify,
// when this machine has it).
func TestSystemdUnits(t *testing.T) {
	hardening := map[string]string{
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
		"ProtectControlGroups": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "Restart": "on-failure",
		"KillMode": "mixed", "KillSignal": "SIGTERM",
	}
	for path, want := range map[string]map[string]string{
		agentUnit: {"User": "postgres", "Group": "postgres", "DevicePolicy": "closed",
			"ExecStart": "/usr/local/bin/pharos agent --config /etc/pharos/agent.yaml"},
		proxyUnit: {"User": "pharos", "Group": "pharos", "PrivateDevices": "yes",
			"ExecStart":  "/usr/local/bin/pharos proxy --config /etc/pharos/proxy.yaml",
			"ExecReload": "/bin/kill -HUP $MAINPID"},
	} {
		u := loadUnit(t, path)
		for k, v := range hardening {
			if _, ok := want[k]; !ok {
				want[k] = v
			}
		}
		for k, v := range want {
			got, ok := u.get("Service", k)
			if !ok || got != v {
				t.Errorf("%s: %s=%q (set: %v), want %q", path, k, got, ok, v)
			}
		}
		for _, k := range []string{"RestartSec", "LimitNOFILE", "TimeoutStopSec"} {
			if _, ok := u.get("Service", k); !ok {
				t.Errorf("%s: no %s", path, k)
			}
		}
		if v, _ := u.get("Install", "WantedBy"); v != "multi-user.target" {
			t.Errorf("%s: WantedBy=%q", path, v)
		}
	}
	au := loadUnit(t, agentUnit)
	// The agent reloads nothing (it logs and ignores SIGHUP): a reload
	// command would pretend otherwise.
	if _, ok := au.get("Service", "ExecReload"); ok {
		t.Errorf("%s: ExecReload set, but the agent has nothing to reload", agentUnit)
	}
	// On SIGTERM the agent stops PostgreSQL (up to 30 s, then SIGKILL), runs
	// on_stop (callback_timeout, 30 s by default) and releases the key, all
	// within 65 s (haagent's shutdown); systemd must not SIGKILL it first.
	if stop := unitDuration(t, au, "TimeoutStopSec"); stop <= unitStopWait {
		t.Errorf("%s: TimeoutStopSec %v would cut the agent's clean stop (up to %v) short", agentUnit, stop, unitStopWait)
	}
	// A crashed agent restarts after the lease of a dead leader expired
	// (ttl, 4 s by default), as localha's supervisor does.
	if rs := unitDuration(t, au, "RestartSec"); rs <= 4*time.Second {
		t.Errorf("%s: RestartSec %v is not longer than the default ttl", agentUnit, rs)
	}
	if got := au.all("Service", "DeviceAllow"); !slices.Contains(got, "/dev/watchdog rw") {
		t.Errorf("%s: DeviceAllow %v lacks /dev/watchdog rw", agentUnit, got)
	}
	// The udev rule hands the watchdog to the agent's user.
	// Both names of the device: the legacy /dev/watchdog (KERNEL) and the
	// subsystem's /dev/watchdogN.
	matches := map[string]bool{}
	for _, line := range strings.Split(readFile(t, udevRule), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		match, _, _ := strings.Cut(line, ",")
		if !strings.Contains(line, `OWNER="postgres"`) || !strings.Contains(line, `MODE="0600"`) ||
			(match != `KERNEL=="watchdog"` && match != `SUBSYSTEM=="watchdog"`) {
			t.Errorf("%s: unexpected rule %q", udevRule, line)
		}
		matches[match] = true
	}
	for _, want := range []string{`KERNEL=="watchdog"`, `SUBSYSTEM=="watchdog"`} {
		if !matches[want] {
			t.Errorf("%s: no rule for %s", udevRule, want)
		}
	}
	t.Run("systemd-analyze verify", func(t *testing.T) {
		analyze, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skip("no systemd-analyze on this machine")
		}
		dir := t.TempDir()
		var paths []string
		for _, path := range []string{agentUnit, proxyUnit} {
			// verify insists that ExecStart's program exists.
			p := filepath.Join(dir, filepath.Base(path))
			writeFile(t, p, strings.ReplaceAll(readFile(t, path), "/usr/local/bin/pharos", "/bin/true"))
			paths = append(paths, p)
		}
		out, err := run(t, dir, analyze, append([]string{"verify", "--man=no"}, paths...)...)
		var complaints []string
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, dir) {
				complaints = append(complaints, line)
			}
		}
		if err != nil || len(complaints) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})
}

// --- helpers ---

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustGlob(t *testing.T, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	if err != nil || len(m) == 0 {
		t.Fatalf("no file matches %s (%v)", pattern, err)
	}
	return m
}

// loadExamples decodes the example configs in examples/sub, generically
// (the real parsers run in cmd/pharos), by file name.
func loadExamples(t *testing.T, sub, pattern string, want int) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, path := range mustGlob(t, filepath.Join(examplesDir, sub, pattern)) {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(readFile(t, path)), &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out[filepath.Base(path)] = m
	}
	if len(out) != want {
		t.Fatalf("%d files in %s, want %d", len(out), filepath.Join(examplesDir, sub), want)
	}
	return out
}

func mergeMaps(ms ...map[string]map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

func sortedStrings(v any) []string {
	l, _ := v.([]any)
	var out []string
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// scrapeTargets returns prometheus.yml's static targets by job, sorted.
func scrapeTargets(t *testing.T) map[string][]string {
	t.Helper()
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, promConfig)), &cfg); err != nil {
		t.Fatalf("%s: %v", promConfig, err)
	}
	out := map[string][]string{}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			out[sc.JobName] = append(out[sc.JobName], st.Targets...)
		}
		slices.Sort(out[sc.JobName])
	}
	return out
}

func isUnder(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// unit is a parsed systemd unit file: section → key → values in order.
type unit map[string]map[string][]string

func loadUnit(t *testing.T, path string) unit {
	t.Helper()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(readFile(t, path)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: cannot parse %q", path, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// get returns the last value of key (systemd's rule for single-valued
// settings).
func (u unit) get(section, key string) (string, bool) {
	vs := u[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

func (u unit) all(section, key string) []string { return u[section][key] }

func unitDuration(t *testing.T, u unit, key string) time.Duration {
	t.Helper()
	v, ok := u.get("Service", key)
	if !ok {
		t.Fatalf("no %s", key)
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%s: %v", key, v, err)
	}
	return d
}

func testCert(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := pglocal.SelfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}
