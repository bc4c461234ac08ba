package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/internal/pgproc"
	"github.com/pharos-ha/pharos/internal/restapi"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// deployDir is the repository's deploy/ directory, from this package's.
const deployDir = "../../deploy"

// TestDeployExampleAgents: every agent config in deploy/examples/agent is
// accepted by the agent's own parser and validation (the strict YAML
// decoder, the timing rules, the secrets, the etcd TLS material, the REST
// API's certificate), started the way deploy/systemd/pharos-agent.service
// starts it. Nothing is started and nothing is dialled: the examples name
// 10.0.0.x addresses.
//
// The loaders read every *_file, certificate and key they name, so each
// example is loaded from a temporary copy whose /etc/pharos/ paths point
// at generated files (passwords, a CA, a certificate and key it signed).
func TestDeployExampleAgents(t *testing.T) {
	execArgs := unitArgs(t, "pharos-agent.service", "agent")
	files, _ := filepath.Glob(filepath.Join(deployDir, "examples", "agent", "*.yaml"))
	if len(files) != 3 {
		t.Fatalf("want three agent examples, have %v", files)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			copyPath, raw := exampleCopy(t, path)
			args := withConfig(t, execArgs, "/etc/pharos/agent.yaml", copyPath)
			// The example names Debian's PostgreSQL 15 programs; a machine
			// whose tests use other ones says so in PHAROS_PG_BINDIR.
			if dir := os.Getenv(pgproc.BinDirEnv); dir != "" {
				args = append(args, "--bin-dir", dir)
			}
			s, err := parseAgentArgs(args, io.Discard)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			log := slog.New(slog.DiscardHandler)
			cfg, ecfg, keys, err := s.agentConfig(context.Background(), log)
			if err != nil {
				t.Fatalf("validate: %v", err)
			}
			acfg, err := s.apiConfig(4 * cfg.Rules.Timing.TTL)
			if err != nil {
				t.Fatalf("api: %v", err)
			}
			// Loads the API certificate and checks the credentials; does
			// not listen.
			if _, err := restapi.New(acfg, &lateBackend{}, log); err != nil {
				t.Fatalf("api: %v", err)
			}

			// What the example means to set, as the agent understood it.
			name := strings.TrimSuffix(filepath.Base(path), ".yaml")
			if cfg.Rules.Name != name {
				t.Errorf("name %q, want %q (the file's name)", cfg.Rules.Name, name)
			}
			if keys.Prefix() != "/pharos/main/" {
				t.Errorf("keys under %q", keys.Prefix())
			}
			if cfg.Rules.Timing != core.DefaultTiming() {
				t.Errorf("timing %+v, want the defaults the comments describe", cfg.Rules.Timing)
			}
			if cfg.WatchdogMode != core.WatchdogRequired || cfg.Watchdog == nil {
				t.Errorf("watchdog %q (driver set: %v), want required with the device", cfg.WatchdogMode, cfg.Watchdog != nil)
			}
			if len(ecfg.Endpoints) != 3 || ecfg.TLS == nil || ecfg.TLS.RootCAs == nil || len(ecfg.TLS.Certificates) != 1 {
				t.Errorf("etcd: %d endpoints, TLS %v: want three endpoints, a CA and a client certificate", len(ecfg.Endpoints), ecfg.TLS != nil)
			}
			if want := "https://" + cfg.Host + ":8008"; cfg.APIURL != want {
				t.Errorf("published api_url %q, want %q", cfg.APIURL, want)
			}
			if acfg.Username == "" || acfg.Password == "" || acfg.CertFile == "" {
				t.Errorf("REST API: want basic auth and TLS, have user %q, password set %v, cert %q", acfg.Username, acfg.Password != "", acfg.CertFile)
			}
			if cfg.Postgres.CloneMaxRate != "102400k" {
				t.Errorf("pg_basebackup --max-rate %q, want 102400k (clone_max_rate 100MB)", cfg.Postgres.CloneMaxRate)
			}
			if cfg.Postgres.SuperPassword == "" || cfg.Postgres.ReplicationPassword == "" {
				t.Error("passwords not read from their files")
			}
			// The proxies' auth_user: bootstrap creates it and
			// pharos.get_auth only when given its password.
			if cfg.Postgres.ProxyAuthUser != "pharos_auth" || cfg.Postgres.ProxyAuthPassword == "" {
				t.Errorf("proxy auth user %q, password set %v: want pharos_auth with its password from proxy_auth_password_file",
					cfg.Postgres.ProxyAuthUser, cfg.Postgres.ProxyAuthPassword != "")
			}
			if len(cfg.Postgres.HBA) == 0 || !strings.Contains(strings.Join(cfg.Postgres.HBA, "\n"), "replication "+cfg.Postgres.ReplicationUser) {
				t.Errorf("pg_hba %q lets no replication connection in", cfg.Postgres.HBA)
			}
			if !strings.Contains(raw, "host: "+cfg.Host) || cfg.Postgres.Listen != cfg.Host {
				t.Errorf("host %q, pg_listen %q: the other members reach PostgreSQL at host", cfg.Host, cfg.Postgres.Listen)
			}
		})
	}
}

// TestDeployExampleProxies: every proxy config in deploy/examples/proxy is
// accepted by the proxy's parser and validation (listeners, client TLS
// certificate, etcd TLS material, health-check settings), started the way
// deploy/systemd/pharos-proxy.service starts it. The topology source itself
// is not built: its etcd client would dial the examples' 10.0.0.x
// addresses. Paths are rewritten as for the agents.
func TestDeployExampleProxies(t *testing.T) {
	execArgs := unitArgs(t, "pharos-proxy.service", "proxy")
	files, _ := filepath.Glob(filepath.Join(deployDir, "examples", "proxy", "*.yaml"))
	if len(files) != 2 {
		t.Fatalf("want two proxy examples, have %v", files)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			copyPath, _ := exampleCopy(t, path)
			ps, err := parseProxyArgs(withConfig(t, execArgs, "/etc/pharos/proxy.yaml", copyPath), io.Discard)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			pcfg, err := ps.proxyConfig() // loads the client TLS certificate
			if err != nil {
				t.Fatalf("validate: %v", err)
			}
			ecfg, err := ps.etcdConfig()
			if err != nil {
				t.Fatalf("etcd: %v", err)
			}
			hcfg, err := ps.healthConfig()
			if err != nil {
				t.Fatalf("health checks: %v", err)
			}
			if _, err := router.NewHealthChecker(hcfg, slog.New(slog.DiscardHandler), metrics.NewProxy(prometheus.NewRegistry())); err != nil {
				t.Fatalf("health checks: %v", err)
			}

			if ps.Source != "pharos" || ps.Cluster != "main" || !ps.HealthChecks {
				t.Errorf("source %q, cluster %q, health checks %v: want pharos, main, on", ps.Source, ps.Cluster, ps.HealthChecks)
			}
			if len(ecfg.Endpoints) != 3 || ecfg.TLS == nil || ecfg.TLS.RootCAs == nil || len(ecfg.TLS.Certificates) != 1 {
				t.Errorf("etcd: %d endpoints, TLS %v: want three endpoints, a CA and a client certificate", len(ecfg.Endpoints), ecfg.TLS != nil)
			}
			if pcfg.TLSMode != proxy.TLSRequire || pcfg.BackendTLS != proxy.BackendTLSDisable {
				t.Errorf("tls_mode %q, backend_tls %q: want require and disable (see the known limit on channel binding)", pcfg.TLSMode, pcfg.BackendTLS)
			}
			if hcfg.Password == "" {
				t.Error("health_password not read from its file")
			}
			if pcfg.AuthType != proxy.AuthSCRAM || pcfg.AuthUser != "pharos_auth" || pcfg.AuthPassword == "" || pcfg.AuthFile != "" {
				t.Errorf("auth_type %q, auth_user %q (password set %v), auth_file %q: want scram-sha-256 with the agents' pharos_auth and its password from auth_password_file",
					pcfg.AuthType, pcfg.AuthUser, pcfg.AuthPassword != "", pcfg.AuthFile)
			}
			for key, a := range map[string]string{"rw_listen": ps.RWListen, "ro_listen": ps.ROListen, "metrics_listen": ps.MetricsListen} {
				if host, _, err := net.SplitHostPort(a); err != nil || net.ParseIP(host) == nil {
					t.Errorf("%s %q: want an IP:port of the proxy's host", key, a)
				}
			}
		})
	}
}

// unitArgs returns the arguments after the subcommand in the ExecStart
// line of a deploy/systemd unit.
func unitArgs(t *testing.T, unit, sub string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "systemd", unit))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatalf("%s: no ExecStart", unit)
	}
	f := strings.Fields(m[1])
	if len(f) < 2 || filepath.Base(f[0]) != "pharos" || f[1] != sub {
		t.Fatalf("%s: ExecStart=%s does not run pharos %s", unit, m[1], sub)
	}
	return f[2:]
}

// withConfig returns args with the config path the unit names replaced by
// the test's copy.
func withConfig(t *testing.T, args []string, unitPath, path string) []string {
	t.Helper()
	out := append([]string(nil), args...)
	for i, a := range out {
		if a == unitPath {
			out[i] = path
			return out
		}
	}
	t.Fatalf("the unit's arguments %q do not name %s", args, unitPath)
	return nil
}

// exampleCopy writes a copy of the example at path whose /etc/pharos/
// paths point into a temporary directory holding made-up secrets (*.password,
// *.token), a CA (*ca.crt) and a certificate and key it signed (other *.crt,
// *.key). It returns the copy's path and the example's text.
func exampleCopy(t *testing.T, path string) (string, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw := string(b)
	root := t.TempDir()
	caPEM, certPEM, keyPEM := testPKI(t)
	// The values of keys, not the paths comments mention.
	for _, m := range regexp.MustCompile(`(?m)^\s*[a-z_]+:\s*(/etc/pharos/\S+)\s*$`).FindAllStringSubmatch(raw, -1) {
		ref := m[1]
		var content []byte
		switch name := filepath.Base(ref); {
		case strings.HasSuffix(name, ".password"), strings.HasSuffix(name, ".token"):
			content = []byte("made-up-secret-for-" + strings.TrimSuffix(name, filepath.Ext(name)) + "\n")
		case strings.HasSuffix(name, "ca.crt"):
			content = caPEM
		case strings.HasSuffix(name, ".crt"):
			content = certPEM
		case strings.HasSuffix(name, ".key"):
			content = keyPEM
		default:
			t.Fatalf("%s names %s: no idea what to put there", path, ref)
		}
		local := filepath.Join(root, ref)
		if err := os.MkdirAll(filepath.Dir(local), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(local, content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	copyPath := filepath.Join(root, filepath.Base(path))
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(raw, "/etc/pharos/", root+"/etc/pharos/")), 0o600); err != nil {
		t.Fatal(err)
	}
	return copyPath, raw
}

// testPKI returns a CA certificate and a certificate for 127.0.0.1 with
// its key, PEM-encoded: one self-signed certificate serves as both, which
// is all the loaders check (files that parse, a key that matches).
func testPKI(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := pglocal.SelfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, certPEM, keyPEM
}
