package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// TestAgentKeepsSecretsToItself runs the agent binary with every secret in
// its environment (PHAROS_*_PASSWORD, PHAROS_API_TOKEN) and lets it
// bootstrap a one-node cluster whose server logs every statement. The
// attacks: a callback that dumps its environment, a read of the
// postmaster's /proc/<pid>/environ, and the server log after bootstrap.
// None holds a secret; the roles bootstrap created log in with their
// passwords.
func TestAgentKeepsSecretsToItself(t *testing.T) {
	bin := pharosBinary(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	owner, err := pgproc.CurrentOwner()
	if err != nil {
		t.Fatal(err)
	}
	// Reachable by the server's account, unlike t.TempDir().
	dir, err := os.MkdirTemp("", "pharos-secrets-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	nodeDir := filepath.Join(dir, "n1")
	if err := owner.MkdirAll(nodeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ports, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	apiPort, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "dump-env")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nenv > "+dir+"/$1.env\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	config := writeConfig(t, "parameters:\n  log_statement: all\non_role_change: "+script+"\non_stop: "+script+"\n")

	random := func(prefix string) string {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		return prefix + hex.EncodeToString(b)
	}
	secrets := map[string]string{
		"PHAROS_SUPERUSER_PASSWORD":   random("su-"),
		"PHAROS_REPLICATION_PASSWORD": random("repl-"),
		"PHAROS_MONITOR_PASSWORD":     random("mon-"),
		"PHAROS_API_PASSWORD":         random("api-"),
		"PHAROS_PROXY_AUTH_PASSWORD":  random("pauth-"),
		"PHAROS_API_TOKEN":            random("tok-"),
	}
	// leaks names the secrets found in b.
	leaks := func(b []byte) []string {
		var found []string
		for k, v := range secrets {
			if bytes.Contains(b, []byte(k)) || bytes.Contains(b, []byte(v)) {
				found = append(found, k)
			}
		}
		return found
	}

	dataDir := filepath.Join(nodeDir, "data")
	logPath := filepath.Join(dir, "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	agentLog := func() []byte { b, _ := os.ReadFile(logPath); return b }
	cmd := exec.Command(bin, "agent", "--config", config, "--name", "n1", "--cluster", "secrets", "--etcd", etcd.Endpoints()[0],
		"--data-dir", dataDir, "--pg-port", strconv.Itoa(ports), "--watchdog", "off",
		"--api-listen", "127.0.0.1:"+strconv.Itoa(apiPort), "--api-username", "admin")
	cmd.Env = os.Environ()
	for k, v := range secrets {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	// Bootstrapped: the primary answers for the monitor role.
	monitorConn := func(user, password string) (*pgx.Conn, error) {
		cc, err := pgx.ParseConfig("host=127.0.0.1 port=" + strconv.Itoa(ports) + " dbname=postgres sslmode=disable connect_timeout=2 user=" + user)
		if err != nil {
			return nil, err
		}
		cc.Password, cc.RequireAuth = password, "scram-sha-256"
		return pgx.ConnectConfig(ctx, cc)
	}
	var conn *pgx.Conn
	for deadline := time.Now().Add(90 * time.Second); ; {
		if conn, err = monitorConn("pharos_monitor", secrets["PHAROS_MONITOR_PASSWORD"]); err == nil {
			break
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("agent exited: %v\n%s", err, agentLog())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the monitor role cannot log in after 90s: %v", err)
		}
	}
	var super, monitor bool
	if err := conn.QueryRow(ctx, "SELECT rolsuper, pg_has_role(current_user, 'pg_monitor', 'MEMBER') FROM pg_roles WHERE rolname = current_user").Scan(&super, &monitor); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if super || !monitor {
		t.Errorf("pharos_monitor: superuser %v, pg_monitor member %v; want a plain pg_monitor member", super, monitor)
	}
	if conn, err := monitorConn("replicator", secrets["PHAROS_REPLICATION_PASSWORD"]); err != nil {
		t.Errorf("the replication role does not log in with its password: %v", err)
	} else {
		conn.Close(ctx)
	}
	// The proxies' lookup role was made from its secret too (so the
	// leak checks below looked at a secret the agent used).
	if conn, err := monitorConn("pharos_auth", secrets["PHAROS_PROXY_AUTH_PASSWORD"]); err != nil {
		t.Errorf("the proxies' auth_user does not log in with its password: %v", err)
	} else {
		conn.Close(ctx)
	}

	pidLine, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _, _ := strings.Cut(string(pidLine), "\n")
	environ, err := os.ReadFile("/proc/" + strings.TrimSpace(pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	if found := leaks(environ); len(found) > 0 {
		t.Errorf("the postmaster's environment holds %v", found)
	}

	serverLog, err := os.ReadFile(filepath.Join(nodeDir, "n1-postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(serverLog, []byte(`CREATE ROLE "replicator" WITH REPLICATION LOGIN PASSWORD 'SCRAM-SHA-256$4096:`)) {
		t.Fatalf("the server log lacks the replication role's creation: is log_statement on?\n%s", serverLog)
	}
	if found := leaks(serverLog); len(found) > 0 {
		t.Errorf("the server log holds %v", found)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		stopped = true
	case <-time.After(60 * time.Second):
		t.Fatalf("agent did not stop within 60s of SIGTERM:\n%s", agentLog())
	}
	for _, action := range []string{"on_role_change", "on_stop"} {
		env, err := os.ReadFile(filepath.Join(dir, action+".env"))
		// on_role_change runs only when the first record the agent
		// published was not already the primary's; on_stop always does.
		if errors.Is(err, os.ErrNotExist) && action == "on_role_change" {
			continue
		}
		if err != nil {
			t.Errorf("%s: no environment dumped: %v", action, err)
			continue
		}
		if found := leaks(env); len(found) > 0 {
			t.Errorf("the %s callback's environment holds %v", action, found)
		}
		if !bytes.Contains(env, []byte("PHAROS_MEMBER=n1\n")) {
			t.Errorf("the %s callback's environment lacks PHAROS_MEMBER", action)
		}
	}
	if found := leaks(agentLog()); len(found) > 0 {
		t.Errorf("the agent's log holds %v", found)
	}
}
