package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	pcluster "github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
)

// runCtlCmd runs `pharos ctl args...` in-process and returns its exit code,
// stdout and stderr, failing the test if it has not exited within 10 s.
func runCtlCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(append([]string{"ctl"}, args...), &stdout, &stderr) }()
	select {
	case code := <-done:
		return code, stdout.String(), stderr.String()
	case <-time.After(10 * time.Second):
		t.Fatalf("pharos ctl %s did not exit within 10s", strings.Join(args, " "))
		return 0, "", ""
	}
}

func TestCtlUsageErrors(t *testing.T) {
	t.Setenv("PHAROS_ETCD", "")
	t.Setenv("PHAROS_CLUSTER", "")
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string // must appear
		lines  int    // stderr lines; 0: the usage follows the message
	}{
		{name: "no verb", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1"}, stderr: "usage: pharos ctl"},
		{name: "unknown verb", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "frobnicate"}, stderr: `unknown verb "frobnicate"`},
		{name: "missing cluster", args: []string{"--etcd", "127.0.0.1:1", "list"}, stderr: "cluster: missing", lines: 1},
		{name: "invalid cluster name", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "a/b", "list"}, stderr: "cluster:", lines: 1},
		{name: "missing etcd", args: []string{"--cluster", "c1", "list"}, stderr: "etcd: missing", lines: 1},
		{name: "unknown flag", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "--bogus", "list"}, stderr: "bogus", lines: 1},
		{name: "unknown verb flag", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "list", "--yaml"}, stderr: "yaml", lines: 1},
		{name: "stray argument", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "list", "n1"}, stderr: `unexpected argument "n1"`, lines: 1},
		{name: "bad timeout", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "--timeout", "0s", "list"}, stderr: "timeout", lines: 1},
		{name: "password without a user", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "--etcd-password-file", writeConfig(t, "secret\n"), "list"}, stderr: "etcd_username", lines: 1},
		{name: "missing config file", args: []string{"--config", "/nonexistent/pharos.yaml", "list"}, stderr: "config", lines: 1},
		{name: "http etcd endpoint with a CA", args: []string{"--etcd", "http://127.0.0.1:1", "--cluster", "c1", "--etcd-cacert", "/nonexistent/ca.pem", "list"},
			stderr: `etcd: endpoint "http://127.0.0.1:1" is plain http:// while etcd_cacert is set`, lines: 1},
		{name: "http etcd endpoint with a password", args: []string{"--etcd", "http://127.0.0.1:1", "--cluster", "c1", "--etcd-username", "ops", "--etcd-password-file", writeConfig(t, "secret\n"), "list"},
			stderr: `etcd: endpoint "http://127.0.0.1:1" is plain http:// while etcd_password is set`, lines: 1},
		{name: "bad value in the config file", args: []string{"--config", writeConfig(t, "etcd: {a: b}\ncluster: c1\n"), "list"}, stderr: "etcd (line 1)", lines: 1},
		{name: "switchover at a bad time", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "switchover", "--force", "--at", "soon"}, stderr: `at: "soon"`, lines: 1},
		{name: "switchover max lag not a size", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "switchover", "--max-lag", "lots"}, stderr: "max-lag", lines: 1},
		{name: "failover without --to", args: []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "failover", "--force"}, stderr: "--to is required", lines: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCtlCmd(t, tc.args...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tc.stderr) || stdout != "" {
				t.Errorf("stdout %q, stderr:\n%s\nwant %q on stderr only", stdout, stderr, tc.stderr)
			}
			n := strings.Count(stderr, "\n")
			if tc.lines == 0 && !strings.Contains(stderr, "verbs:") {
				t.Errorf("no usage after the message:\n%s", stderr)
			}
			if tc.lines > 0 && n != tc.lines {
				t.Errorf("%d lines on stderr, want %d:\n%s", n, tc.lines, stderr)
			}
		})
	}
}

// TestCtlRefusesBeforeEtcd: what needs no cluster to judge is refused
// before etcd is asked (the endpoint here answers nothing).
func TestCtlRefusesBeforeEtcd(t *testing.T) {
	base := []string{"--etcd", "127.0.0.1:1", "--cluster", "c1", "--timeout", "1s"}
	t.Run("edit-config with an unknown key", func(t *testing.T) {
		code, stdout, stderr := runCtlCmd(t, append(base, "edit-config", "--force", "ttl=30")...)
		if code != exitFailure || !strings.Contains(stderr, "ttl: unknown key") || strings.Contains(stderr, "unreachable") || stdout != "" {
			t.Errorf("exit %d, stdout %q, stderr %q; want %d refusing the key", code, stdout, stderr, exitFailure)
		}
	})
	t.Run("edit-config with nothing to change", func(t *testing.T) {
		code, _, stderr := runCtlCmd(t, append(base, "edit-config", "--force")...)
		if code != exitFailure || !strings.Contains(stderr, "nothing to change") {
			t.Errorf("exit %d, stderr %q; want %d", code, stderr, exitFailure)
		}
	})
	t.Run("edit-config with an unknown key is refused before confirmation", func(t *testing.T) {
		// Without --force: the key is judged first, so nobody is asked to
		// confirm (or told to pass --force for) a change that cannot be made.
		code, _, stderr := runCtlCmd(t, append(base, "edit-config", "ttl=30")...)
		if code != exitFailure || !strings.Contains(stderr, "ttl: unknown key") || strings.Contains(stderr, "--force") {
			t.Errorf("exit %d, stderr %q; want %d refusing the key", code, stderr, exitFailure)
		}
	})
	t.Run("a change without --force off a terminal", func(t *testing.T) {
		if isTerminal(os.Stdin) {
			t.Skip("stdin is a terminal: the verb would ask there")
		}
		for _, verb := range [][]string{{"pause"}, {"resume"}, {"edit-config", "pause=true"}, {"switchover", "--cancel"}} {
			code, _, stderr := runCtlCmd(t, append(base, verb...)...)
			if code != exitUsage || !strings.Contains(stderr, "pass --force") {
				t.Errorf("%v: exit %d, stderr %q; want %d asking for --force", verb, code, stderr, exitUsage)
			}
		}
	})
}

func TestCtlEtcdUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	start := time.Now()
	code, stdout, stderr := runCtlCmd(t, "--etcd", addr, "--cluster", "c1", "list")
	elapsed := time.Since(start)
	if code != exitFailure {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitFailure, stderr)
	}
	if want := "ctl: etcd " + addr + " unreachable: "; !strings.Contains(stderr, want) || strings.Count(stderr, "\n") != 1 || stdout != "" {
		t.Errorf("stdout %q, stderr %q; want one line with %q", stdout, stderr, want)
	}
	if elapsed > ctlDefaultTimeout+2*time.Second {
		t.Errorf("took %v, want about the %v timeout", elapsed, ctlDefaultTimeout)
	}

	// Verbs that change the cluster fail the same way, having changed
	// nothing.
	for _, verb := range [][]string{{"switchover", "--force"}, {"edit-config", "pause=true", "--force"}} {
		code, _, stderr := runCtlCmd(t, append([]string{"--etcd", addr, "--cluster", "c1", "--timeout", "1s"}, verb...)...)
		if code != exitFailure || !strings.Contains(stderr, "unreachable") {
			t.Errorf("%v with etcd down: exit %d, stderr %q", verb, code, stderr)
		}
	}
}

func TestCtlListAndHistory(t *testing.T) {
	t.Setenv("PHAROS_ETCD", "")
	t.Setenv("PHAROS_CLUSTER", "")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	cli, err := etcd.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	keys, _ := pcluster.NewKeys("c1")
	lag := int64(3 << 20)
	for _, m := range []pcluster.Member{
		{Name: "n1", Role: pcluster.RolePrimary, State: "running", Host: "127.0.0.1", Port: 5432, Timeline: 2},
		{Name: "n2", Role: pcluster.RoleReplica, State: "streaming", Host: "127.0.0.1", Port: 5433, Timeline: 2, LagBytes: &lag, Tags: pcluster.Tags{NoLoadBalance: true}},
	} {
		rec, err := pcluster.MarshalMember(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, keys.Member(m.Name), string(rec)); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Put(ctx, keys.Leader(), "n1")
	if err != nil {
		t.Fatal(err)
	}
	epoch := resp.Header.Revision
	hist, _ := pcluster.MarshalHistory(pcluster.History{
		{Timeline: 2, LSN: 0x3000060, Reason: "failover", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), NewLeader: "n1", OldLeader: "n2"},
	})
	if _, err := cli.Put(ctx, keys.History(), string(hist)); err != nil {
		t.Fatal(err)
	}
	ep := etcd.Endpoints()[0]

	t.Run("list", func(t *testing.T) {
		code, stdout, stderr := runCtlCmd(t, "--etcd", ep, "--cluster", "c1", "list")
		if code != exitOK || stderr != "" {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		want := []string{
			"MEMBER HOST:PORT ROLE STATE TL LAG LEADER TAGS",
			"n1 127.0.0.1:5432 primary running 2 unknown * epoch " + itoa(epoch) + " -",
			"n2 127.0.0.1:5433 replica streaming 2 3 MB - noloadbalance",
			"leader n1 (epoch " + itoa(epoch) + ")",
		}
		lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
		if len(lines) != len(want) {
			t.Fatalf("output:\n%s", stdout)
		}
		for i := range want {
			if got := strings.Join(strings.Fields(lines[i]), " "); got != want[i] {
				t.Errorf("line %d = %q, want %q", i, lines[i], want[i])
			}
		}
	})

	t.Run("list --watch redraws until interrupted", func(t *testing.T) {
		wctx, stop := context.WithTimeout(ctx, 1200*time.Millisecond)
		defer stop()
		var stdout, stderr bytes.Buffer
		done := make(chan int, 1)
		go func() {
			done <- runCtl(wctx, []string{"--etcd", ep, "--cluster", "c1", "list", "--watch", "300ms"}, &stdout, &stderr)
		}()
		select {
		case code := <-done:
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("list --watch did not stop when its context ended")
		}
		if n := strings.Count(stdout.String(), "leader n1 (epoch"); n < 3 {
			t.Errorf("table drawn %d times in 1.2s at 300ms, want at least 3:\n%s", n, stdout.String())
		}
	})

	t.Run("list --json with the flags after the verb", func(t *testing.T) {
		code, stdout, stderr := runCtlCmd(t, "list", "--json", "--etcd", ep, "--cluster", "c1")
		if code != exitOK || stderr != "" {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		var st struct {
			Leader  struct{ Name string }
			Members []struct{ Name string }
		}
		if err := json.Unmarshal([]byte(stdout), &st); err != nil {
			t.Fatalf("%v in\n%s", err, stdout)
		}
		if st.Leader.Name != "n1" || len(st.Members) != 2 {
			t.Errorf("JSON:\n%s", stdout)
		}
	})

	t.Run("history from a daemon's config file", func(t *testing.T) {
		// ctl reads the etcd keys of a proxy or agent file and skips the rest.
		path := writeConfig(t, "rw_listen: 127.0.0.1:6432\netcd: ["+ep+"]\ncluster: c1\nsource: pharos\n")
		code, stdout, stderr := runCtlCmd(t, "--config", path, "history")
		if code != exitOK || stderr != "" {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		want := "TL LSN REASON TIME NEW LEADER OLD LEADER\n2 0/3000060 failover 2026-01-02T03:04:05Z n1 n2\n"
		var got strings.Builder
		for _, line := range strings.Split(strings.TrimRight(stdout, "\n"), "\n") {
			got.WriteString(strings.Join(strings.Fields(line), " ") + "\n")
		}
		if got.String() != want {
			t.Errorf("history:\n%s\nwant\n%s", stdout, want)
		}
	})

	t.Run("history --json from the environment", func(t *testing.T) {
		t.Setenv("PHAROS_ETCD", ep)
		t.Setenv("PHAROS_CLUSTER", "c1")
		code, stdout, stderr := runCtlCmd(t, "history", "--json")
		if code != exitOK || stderr != "" {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		h, err := pcluster.ParseHistory([]byte(stdout))
		if err != nil || len(h) != 1 || h[0].NewLeader != "n1" {
			t.Errorf("history %+v, %v from\n%s", h, err, stdout)
		}
	})

	t.Run("flags override the file", func(t *testing.T) {
		path := writeConfig(t, "etcd: [127.0.0.1:1]\ncluster: other\n")
		code, stdout, stderr := runCtlCmd(t, "--config", path, "--etcd", ep, "list", "--cluster", "c1")
		if code != exitOK || !strings.Contains(stdout, "leader n1") {
			t.Errorf("exit %d, stdout:\n%s\nstderr %q", code, stdout, stderr)
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
