package main

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/pglocal"
)

// TestAgentRejectsBadConfig: every bad setting is one line naming the key,
// exit 2, before anything touches etcd or the data directory.
func TestAgentRejectsBadConfig(t *testing.T) {
	// Secrets missing from the flags must not come from the environment.
	for _, env := range []string{"PHAROS_REPLICATION_PASSWORD", "PHAROS_MONITOR_PASSWORD", "PHAROS_API_PASSWORD", "PHAROS_API_TOKEN"} {
		t.Setenv(env, "")
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// PostgreSQL would SASLprep it before hashing; the agent does not.
	unicodePW := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(unicodePW, []byte("pässword\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"agent", "--name", "n1", "--cluster", "c1", "--etcd", "127.0.0.1:1", "--data-dir", dataDir,
		"--pg-port", "5432", "--superuser-password-file", pw, "--replication-password-file", pw}
	with := func(extra ...string) []string { return append(append([]string{}, base...), extra...) }
	without := func(flag string) []string {
		var out []string
		for i := 0; i < len(base); i++ {
			if base[i] == flag {
				i++
				continue
			}
			out = append(out, base[i])
		}
		return out
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no name", without("--name"), "name: required"},
		{"bad name", with("--name", "n/1"), `name "n/1"`},
		{"no data dir", without("--data-dir"), "data_dir: required"},
		{"no etcd", without("--etcd"), "etcd: at least one endpoint"},
		{"bad cluster", with("--cluster", "a b"), "cluster:"},
		{"port out of range", with("--pg-port", "70000"), "pg_port: 70000"},
		{"ttl not whole seconds", with("--ttl", "4500ms"), "ttl 4.5s: etcd leases have whole seconds"},
		{"ttl too short", with("--ttl", "1s"), "ttl 1s: must be at least 2s"},
		{"safety margin above ttl", with("--safety-margin", "5s"), "safety_margin 5s: must be below ttl"},
		{"loop too slow for the ttl", with("--loop-wait", "2s"), "need 2·loop_wait + retry_timeout ≤ ttl − safety_margin"},
		{"bad duration", with("--ttl", "soon"), `invalid value "soon" for flag -ttl`},
		{"clone rate below pg_basebackup's floor", with("--clone-max-rate", "16kB"), "clone_max_rate 16384: 0 (no limit) or between 32kB and 1024MB"},
		{"clone rate above its ceiling", with("--clone-max-rate", "2GB"), "clone_max_rate 2147483648"},
		{"missing password file", with("--superuser-password-file", "/nonexistent/pw"), "superuser_password_file:"},
		{"negative lag", with("--maximum-lag-on-failover", "-1"), "maximum-lag-on-failover"},
		{"unexpected argument", with("extra"), `unexpected argument "extra"`},
		{"clone rate not a size", with("--clone-max-rate", "fast"), "clone-max-rate"},
		{"no replication password", without("--replication-password-file"), "replication_password: required"},
		{"missing etcd CA file", with("--etcd-cacert", "/nonexistent/ca.pem"), "etcd_cacert:"},
		{"http etcd endpoint with a CA and a client certificate", with("--etcd", "http://127.0.0.1:1", "--etcd-cacert", "/nonexistent/ca.pem", "--etcd-cert", "/x.crt", "--etcd-key", "/x.key"),
			`etcd: endpoint "http://127.0.0.1:1" is plain http:// while etcd_cacert and etcd_cert are set`},
		{"bin dir without PostgreSQL", with("--bin-dir", t.TempDir()), "bin_dir:"},
		{"unknown watchdog mode", with("--watchdog", "sometimes"), `watchdog "sometimes"`},
		{"unknown watchdog driver", with("--watchdog-driver", "ipmi"), `watchdog_driver "ipmi"`},
		{"zero callback timeout", with("--callback-timeout", "0s"), "callback_timeout 0s: must be positive"},
		{"api user without a password", with("--api-listen", "127.0.0.1:0", "--api-username", "admin"), "api_username:"},
		{"require_auth unknown method", with("--require-auth", "scram"), `require_auth "scram": invalid require_auth method: "scram"`},
		{"require_auth mixing negations", with("--require-auth", "md5,!password"), "require_auth"},
		{"replication password not ASCII", with("--replication-password-file", unicodePW), "replication_password: password is not ASCII"},
		{"monitor password not ASCII", with("--monitor-password-file", unicodePW), "monitor_password: password is not ASCII"},
		{"monitor user is the superuser", with("--monitor-password-file", pw, "--monitor-user", "postgres"), "monitor_user:"},
		{"monitor user is the replication user", with("--monitor-password-file", pw, "--monitor-user", "replicator"), "monitor_user:"},
		{"host smuggling a conninfo keyword", with("--host", "10.9.9.9\vsslmode=disable"), `host: host "10.9.9.9\vsslmode=disable" is not a host name or IP address`},
		{"host with a space", with("--host", "10.9.9.9 sslmode=disable"), "host: host"},
		{"several hosts", with("--host", "db1,db2"), `host: host "db1,db2"`},
		{"listen addresses with a line feed", with("--pg-listen", "127.0.0.1'\nport = 6001"), `pg_listen: parameter listen_addresses: the value holds "\n"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := runCmd(t, tc.args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("exit %d, stderr %q; want exit 2 and one line with %q", code, stderr, tc.want)
			}
			if _, err := os.Stat(dataDir); err == nil {
				t.Errorf("the data directory was created despite the bad config")
			}
		})
	}
	t.Run("unknown key in the config file", func(t *testing.T) {
		path := writeConfig(t, "name: n1\nttl: 4s\nttl_seconds: 4\n")
		code, stderr := runCmd(t, "agent", "--config", path)
		if code != exitUsage || !strings.Contains(stderr, `unknown key "ttl_seconds"`) {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("clone rate in the config file not a size", func(t *testing.T) {
		path := writeConfig(t, "clone_max_rate: fast\n")
		code, stderr := runCmd(t, with("--config", path)...)
		if code != exitUsage || !strings.Contains(stderr, "clone_max_rate (line 1)") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	for _, tc := range []struct{ name, yaml, want string }{
		{"a parameter name smuggling an assignment", "parameters:\n  \"port '6001' #\": x\n", `parameters: parameter name "port '6001' #"`},
		{"a line feed in a parameter value", "parameters:\n  work_mem: \"1MB\\nport = 6001\"\n", `parameters: parameter work_mem: the value holds "\n" at byte 3`},
		{"an include directive", "parameters:\n  include_dir: /tmp\n", "include directive"},
		{"a protected parameter in capitals", "parameters:\n  PORT: \"6001\"\n", "parameters: PORT is set by the agent itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.yaml)
			code, stderr := runCmd(t, with("--config", path)...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("exit %d, stderr %q; want exit 2 and one line with %q", code, stderr, tc.want)
			}
		})
	}
	t.Run("config file cut short", func(t *testing.T) {
		path := writeConfig(t, "name: n1\nparameters:\n  shared_buffers: '128MB\n")
		code, stderr := runCmd(t, "agent", "--config", path)
		if code != exitUsage || !strings.Contains(stderr, "config") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
}

// TestAgentAcceptsRealHostsAndParameters: the validation that refuses
// smuggled settings keeps the ones operators write.
func TestAgentAcceptsRealHostsAndParameters(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, "parameters:\n  shared_preload_libraries: pg_stat_statements\n  pg_stat_statements.max: \"10000\"\n"+
		"  Work_Mem: 64MB\n  archive_command: \"cp '%p' /arch/%f\"\n")
	for _, host := range []string{"fd00::2", "pg-node-1.db.example.com", "10.0.0.1", "fe80::1%eth0"} {
		t.Run(host, func(t *testing.T) {
			s, err := parseAgentArgs([]string{"--config", path, "--name", "n1", "--cluster", "c1", "--etcd", "127.0.0.1:1",
				"--data-dir", filepath.Join(t.TempDir(), "data"), "--pg-port", "5432", "--host", host,
				"--superuser-password-file", pw, "--replication-password-file", pw}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			cfg, _, _, err := s.agentConfig(t.Context(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatalf("agentConfig: %v", err)
			}
			if cfg.Host != host || cfg.Postgres.Parameters["pg_stat_statements.max"] != "10000" {
				t.Errorf("host %q, parameters %v", cfg.Host, cfg.Postgres.Parameters)
			}
		})
	}
}

// TestAgentWaitsForEtcd: with etcd unreachable the agent keeps retrying,
// says so, touches nothing, survives SIGHUP and stops cleanly on SIGTERM.
func TestAgentWaitsForEtcd(t *testing.T) {
	bin := pharosBinary(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	closed, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "data")
	logPath := filepath.Join(dir, "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "agent", "--name", "n1", "--cluster", "c1", "--etcd", "127.0.0.1:"+itoa(int64(closed)),
		"--data-dir", dataDir, "--pg-port", itoa(int64(port)), "--superuser-password-file", pw, "--replication-password-file", pw)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "etcd unreachable, retrying") {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			t.Fatalf("no 'etcd unreachable' log within 15s:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(dataDir); err == nil {
		t.Error("the agent created the data directory without etcd")
	}
	// SIGHUP (systemctl reload, a closed terminal) must not kill it: it
	// says it has nothing to reload and carries on.
	_ = cmd.Process.Signal(syscall.SIGHUP)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "SIGHUP ignored") {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("agent exited on SIGHUP: %v\n%s", err, b)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("no 'SIGHUP ignored' log:\n%s", b)
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		b, _ := os.ReadFile(logPath)
		if err != nil && !strings.Contains(err.Error(), "exit status") {
			t.Errorf("agent exit: %v\n%s", err, b)
		}
		if strings.Contains(string(b), "secret") {
			t.Errorf("a password reached the log:\n%s", b)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatal("agent did not stop within 10s of SIGTERM")
	}
}
