package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/proxy"
)

// runCmd runs a command line in-process and returns its exit code and
// stderr. Every caller expects an exit before serving; a run still going
// after 10 s fails the test instead of hanging it.
func runCmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(args, &stdout, &stderr) }()
	select {
	case code := <-done:
		return code, stderr.String()
	case <-time.After(10 * time.Second):
		t.Fatalf("pharos %s did not exit within 10s (is it serving?)", strings.Join(args, " "))
		return 0, ""
	}
}

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pharos.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestProxyFlagsOverrideConfigFile(t *testing.T) {
	path := writeConfig(t, `
rw_listen: 127.0.0.1:7001
ro_listen: 127.0.0.1:7002
backends: [10.0.0.1:5432, 10.0.0.2:5432]
health_check_interval: 2s
drain_timeout: 10s
max_message_size: 64kB
max_clients: 50
max_pending_clients: 20
startup_packet_timeout: 3s
ro_fallback_to_primary: true
max_lag: 16MB
etcd: [127.0.0.1:2379]
etcd_username: pharos
pool_size: 20
server_lifetime: 30m
`)
	overridden := func(s *proxySettings) {
		s.RWListen = "127.0.0.1:8001"
		s.Backends = []string{"10.0.0.3:5432"}
		s.DrainTimeout = duration(time.Second)
		s.MaxClients = 0
		s.ROFallbackToPrimary = false
		s.ROListen = ""
		s.Etcd = []string{"127.0.0.1:2380"}
		s.PoolSize = 5
	}
	fromFile := defaultProxySettings()
	fromFile.RWListen = "127.0.0.1:7001"
	fromFile.ROListen = "127.0.0.1:7002"
	fromFile.Backends = []string{"10.0.0.1:5432", "10.0.0.2:5432"}
	fromFile.HealthInterval = duration(2 * time.Second)
	fromFile.DrainTimeout = duration(10 * time.Second)
	fromFile.MaxMessageSize = 64 << 10
	fromFile.MaxClients = 50
	fromFile.MaxPendingClients = 20
	fromFile.StartupPacketTimeout = duration(3 * time.Second)
	fromFile.ROFallbackToPrimary = true
	fromFile.MaxLag = 16 << 20
	fromFile.Etcd = []string{"127.0.0.1:2379"}
	fromFile.EtcdUsername = "pharos"
	fromFile.PoolSize = 20
	fromFile.ServerLifetime = duration(30 * time.Minute)
	want := fromFile
	overridden(&want)

	flags := []string{
		"--rw-listen", "127.0.0.1:8001",
		"--backends", "10.0.0.3:5432",
		"--drain-timeout", "1s",
		"--max-clients", "0", // a zero flag still wins over the file
		"--ro-fallback-to-primary=false",
		"--ro-listen=", // an empty flag disables the endpoint
		"--etcd", "127.0.0.1:2380",
		"--pool-size", "5",
	}
	for _, tc := range []struct {
		name string
		args []string
		want proxySettings
	}{
		{"file alone", []string{"--config", path}, fromFile},
		{"flags after --config", append([]string{"--config", path}, flags...), want},
		{"flags before --config", append(append([]string(nil), flags...), "--config", path), want},
		{"flags without a file keep the defaults", []string{"--rw-listen", "127.0.0.1:8001"}, func() proxySettings {
			s := defaultProxySettings()
			s.RWListen = "127.0.0.1:8001"
			return s
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProxyArgs(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("settings\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestProxyPoolSettings: the pool keys reach proxy.Config, and pool_mode
// defaults to session exactly when the proxy authenticates clients.
func TestProxyPoolSettings(t *testing.T) {
	userlist := writeTemp(t, "pool-userlist.txt", `"bob" "md5d41d8cd98f00b204e9800998ecf8427e"`)
	for _, tc := range []struct {
		name string
		yaml string
		want func(c proxy.Config) bool
	}{
		{"passthrough: none", "rw_listen: 127.0.0.1:0\n", func(c proxy.Config) bool { return c.PoolMode == proxy.PoolNone }},
		{"own authentication: session, PgBouncer's defaults", "auth_type: md5\nauth_file: " + userlist + "\n", func(c proxy.Config) bool {
			return c.PoolMode == proxy.PoolSession && c.PoolSize == 0 && c.ServerResetQuery == "DISCARD ALL" &&
				c.ServerIdleTimeout == 600*time.Second && c.ServerLifetime == time.Hour &&
				c.ServerCheckDelay == 30*time.Second && c.QueryWaitTimeout == 120*time.Second
		}},
		{"own authentication, pooling off", "auth_type: md5\npool_mode: none\nauth_file: " + userlist + "\n", func(c proxy.Config) bool { return c.PoolMode == proxy.PoolNone }},
		{"every key", "auth_type: md5\nauth_file: " + userlist + "\npool_size: 7\nmax_db_connections: 30\nserver_idle_timeout: 1m\n" +
			"server_lifetime: 2m\nserver_reset_query: RESET ALL\nserver_check_delay: 3s\nquery_wait_timeout: 4s\n", func(c proxy.Config) bool {
			return c.PoolSize == 7 && c.MaxDBConnections == 30 && c.ServerIdleTimeout == time.Minute && c.ServerLifetime == 2*time.Minute &&
				c.ServerResetQuery == "RESET ALL" && c.ServerCheckDelay == 3*time.Second && c.QueryWaitTimeout == 4*time.Second
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := parseProxyArgs([]string{"--config", writeConfig(t, tc.yaml)}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := ps.proxyConfig()
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(cfg) {
				t.Errorf("config %+v", cfg)
			}
		})
	}
}

func TestProxyRejectsBadConfigBeforeServing(t *testing.T) {
	// Every case must exit 2 with one line on stderr naming the key. The
	// endpoints are on port 0 and metrics off, so a case that wrongly got
	// through would not collide with anything.
	base := []string{"--rw-listen", "127.0.0.1:0", "--ro-listen", "127.0.0.1:0", "--metrics-listen="}
	for _, tc := range []struct {
		name string
		yaml string   // written to a file passed with --config when not empty
		args []string // after base
		key  string   // must appear on the line
	}{
		{
			name: "unknown key",
			yaml: "rw_listen: 127.0.0.1:0\nbogus_key: 1\n",
			key:  "bogus_key",
		},
		{
			name: "file cut inside a quoted string",
			yaml: "rw_listen: \"127.0.0.1:0\nro_listen: 127.0.0.1:0\n",
			key:  "unexpected end of stream",
		},
		{
			name: "file cut inside a flow sequence",
			yaml: "health_user: pharos_health\nbackends: [127.0.0.1:5432, \"127.0",
			key:  "unexpected end of stream",
		},
		{
			name: "file cut inside a nested mapping",
			yaml: "backends:\n  - 127.0.0.1:5432\n  - {host: \"x",
			key:  "unexpected end of stream",
		},
		{
			name: "bad duration",
			yaml: "startup_timeout: 5 parsecs\n",
			key:  "startup_timeout",
		},
		{
			name: "bad size",
			yaml: "max_message_size: huge\n",
			key:  "max_message_size",
		},
		{
			name: "string for an integer",
			yaml: "max_clients: many\n",
			key:  "max_clients",
		},
		{name: "max_clients of 0, once no limit", yaml: "max_clients: 0\n", key: "max_clients"},
		{name: "unknown auth_type", yaml: "auth_type: password\n", key: "auth_type"},
		{name: "auth_type without auth_file", args: []string{"--auth-type", "scram-sha-256"}, key: "or auth_user"},
		{name: "auth_file and auth_user", yaml: "auth_type: md5\nauth_user: pharos_auth\nauth_password: pw\nauth_file: " + writeTemp(t, "userlist2.txt", `"bob" "md5d41d8cd98f00b204e9800998ecf8427e"`) + "\n", key: "exclusive"},
		{name: "auth_user without a password", args: []string{"--auth-type", "scram-sha-256", "--auth-user", "pharos_auth"}, key: "auth_password"},
		{name: "auth_query without $1", yaml: "auth_type: scram-sha-256\nauth_user: pharos_auth\nauth_password: pw\nauth_query: SELECT 1, 2\n", key: "auth_query"},
		{name: "auth_user with passthrough", args: []string{"--auth-user", "pharos_auth"}, key: "passthrough"},
		{name: "auth_file missing", yaml: "auth_type: md5\nauth_file: /nonexistent/userlist.txt\n", key: "auth_file"},
		{name: "auth_file with a plaintext password", yaml: "auth_type: trust\nauth_file: " + writeTemp(t, "userlist.txt", `"bob" "secret"`) + "\n", key: "plaintext passwords are not accepted"},
		{name: "auth_type cert without client_tls_ca_file", args: []string{"--auth-type", "cert"}, key: "client_tls_ca_file: auth_type cert needs"},
		{name: "client_tls_ca_file without client TLS", args: []string{"--client-tls-ca-file", "/nonexistent/ca.pem"}, key: "client_tls_ca_file: client certificates need tls_mode"},
		{name: "backend_tls_cert_file without backend TLS", args: []string{"--backend-tls-cert-file", "/nonexistent/c.pem", "--backend-tls-key-file", "/nonexistent/k.pem"}, key: "backend_tls_cert_file: a certificate for the servers needs backend_tls"},
		{name: "backend_tls_cert_file missing", args: []string{"--backend-tls", "require", "--backend-tls-cert-file", "/nonexistent/c.pem", "--backend-tls-key-file", "/nonexistent/k.pem"}, key: "backend_tls_cert_file"},
		{name: "pool_mode session in passthrough", args: []string{"--pool-mode", "session"}, key: "pool_mode: session needs the proxy's own authentication (auth_type)"},
		{name: "unknown pool_mode", yaml: "pool_mode: transaction\n", key: "pool_mode"},
		{name: "negative pool_size", args: []string{"--pool-size", "-1"}, key: "pool_size"},
		{name: "negative max_db_connections", yaml: "max_db_connections: -5\n", key: "max_db_connections"},
		{name: "zero server_idle_timeout", yaml: "server_idle_timeout: 0s\n", key: "server_idle_timeout"},
		{name: "negative server_lifetime", args: []string{"--server-lifetime", "-1s"}, key: "server_lifetime"},
		{name: "zero server_check_delay", args: []string{"--server-check-delay", "0s"}, key: "server_check_delay"},
		{name: "bad query_wait_timeout", yaml: "query_wait_timeout: a while\n", key: "query_wait_timeout"},
		{name: "empty server_reset_query", yaml: "server_reset_query: ' '\n", key: "server_reset_query"},
		{name: "negative max_pending_clients", args: []string{"--max-pending-clients", "-1"}, key: "max_pending_clients"},
		{name: "bad startup_packet_timeout", yaml: "startup_packet_timeout: soon\n", key: "startup_packet_timeout"},
		{name: "negative startup_packet_timeout", args: []string{"--startup-packet-timeout", "-1s"}, key: "startup_packet_timeout"},
		{
			name: "bad duration flag",
			args: []string{"--startup-timeout", "soon"},
			key:  "startup-timeout",
		},
		{
			name: "unknown flag",
			args: []string{"--bogus"},
			key:  "bogus",
		},
		{name: "stray argument", args: []string{"serve"}, key: "unexpected argument"},
		{name: "missing config file", args: []string{"--config", "/nonexistent/pharos.yaml"}, key: "config"},
		{name: "tls_mode in the file", yaml: "tls_mode: bogus\n", key: "tls_mode"},
		{name: "tls_mode flag", args: []string{"--tls-mode", "bogus"}, key: "tls_mode"},
		{name: "tls require without a certificate", args: []string{"--tls-mode", "require"}, key: "tls_cert_file"},
		{name: "backend_tls", args: []string{"--backend-tls", "maybe"}, key: "backend_tls"},
		{name: "negative drain timeout", yaml: "drain_timeout: -1s\n", key: "drain_timeout"},
		{name: "max_message_size too small", args: []string{"--max-message-size", "100"}, key: "max_message_size"},
		{name: "log_level", args: []string{"--log-level", "loud"}, key: "log_level"},
		{name: "source not yet available", args: []string{"--source", "pharos"}, key: "source"},
		{name: "source patroni in the file", yaml: "source: patroni\n", key: "source"},
		{name: "no backends", args: []string{"--health-user", "x"}, key: "backends"},
		{name: "backend without a port", args: []string{"--backends", "db1"}, key: "backends"},
		{
			name: "health timeout equal to the interval",
			yaml: "backends: [127.0.0.1:5432]\nhealth_check_interval: 1s\nhealth_check_timeout: 1s\n",
			key:  "health_check_timeout",
		},
		{
			name: "health timeout above the interval",
			args: []string{"--backends", "127.0.0.1:5432", "--health-check-interval", "500ms", "--health-check-timeout", "2s"},
			key:  "health_check_timeout",
		},
		{
			name: "http etcd endpoint with a CA",
			args: []string{"--source", "pharos", "--cluster", "c1", "--etcd", "http://127.0.0.1:1", "--etcd-cacert", "/nonexistent/ca.pem"},
			key:  `etcd: endpoint "http://127.0.0.1:1" is plain http:// while etcd_cacert is set`,
		},
		{
			name: "HTTP etcd endpoint with a client certificate",
			yaml: "source: patroni\ncluster: c1\netcd: [\"https://127.0.0.1:1\", \"HTTP://127.0.0.2:1\"]\netcd_cert: /x.crt\netcd_key: /x.key\n",
			key:  `etcd: endpoint "HTTP://127.0.0.2:1" is plain http:// while etcd_cert is set`,
		},
		{
			name: "http etcd endpoint with a password",
			yaml: "source: pharos\ncluster: c1\netcd: [\"http://127.0.0.1:1\"]\netcd_username: pharos\netcd_password: secret\n",
			key:  `etcd: endpoint "http://127.0.0.1:1" is plain http:// while etcd_password is set`,
		},
		{name: "empty health user", args: []string{"--backends", "127.0.0.1:5432", "--health-user="}, key: "health_user"},
		{name: "unreadable health password file", args: []string{"--backends", "127.0.0.1:5432", "--health-password-file", "/nonexistent/pw"}, key: "health_password_file"},
		{name: "health_require_auth", args: []string{"--backends", "127.0.0.1:5432", "--health-require-auth", "scram"}, key: "health_require_auth"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"proxy"}, base...)
			if tc.yaml != "" {
				args = append(args, "--config", writeConfig(t, tc.yaml))
			}
			args = append(args, tc.args...)
			code, stderr := runCmd(t, args...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitUsage, stderr)
			}
			var problems []string
			if lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n"); len(lines) != 1 {
				problems = append(problems, strconv.Itoa(len(lines))+" lines")
			}
			if !strings.Contains(stderr, tc.key) {
				problems = append(problems, "no "+strconv.Quote(tc.key))
			}
			if len(problems) > 0 {
				t.Errorf("%s; stderr:\n%s", strings.Join(problems, ", "), stderr)
			}
		})
	}
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "…")
	}
	return strings.Join(lines, "\n")
}

func TestCommandDispatch(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no command", nil, exitUsage, "usage: pharos"},
		{"unknown command", []string{"serve"}, exitUsage, `unknown command "serve"`},
		{"help", []string{"help"}, exitOK, "usage: pharos"},
		{"proxy help", []string{"proxy", "-h"}, exitOK, "-rw-listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := runCmd(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, firstLines(stderr, 3), tc.code, tc.stderr)
			}
		})
	}
}

func TestProxyBindFailures(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	common := []string{"proxy", "--backends", "127.0.0.1:1", "--health-user", "x"}

	t.Run("rw port in use", func(t *testing.T) {
		code, stderr := runCmd(t, append(common, "--rw-listen", taken.Addr().String(), "--ro-listen=", "--metrics-listen=")...)
		if code != exitFailure || !strings.Contains(stderr, "rw_listen") {
			t.Errorf("exit %d, stderr %q; want %d naming rw_listen", code, stderr, exitFailure)
		}
	})
	t.Run("metrics port in use releases the proxy ports", func(t *testing.T) {
		port, err := pglocal.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		rw := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		code, stderr := runCmd(t, append(common, "--rw-listen", rw, "--ro-listen=", "--metrics-listen", taken.Addr().String())...)
		if code != exitFailure || !strings.Contains(stderr, "metrics_listen") {
			t.Fatalf("exit %d, stderr %q; want %d naming metrics_listen", code, stderr, exitFailure)
		}
		ln, err := net.Listen("tcp", rw)
		if err == nil {
			ln.Close()
			return
		}
		// A caller that goes on after a failed newProxyStack (the demo)
		// must not find the endpoints still bound.
		t.Fatalf("rw endpoint %s still bound after the failure: %v", rw, err)
	})
}

// writeTemp writes content to a file named name in a fresh directory.
func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
