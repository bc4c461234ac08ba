package haagent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// TestCallbacksRunInOrderBoundedAndNeverBlock: fire returns at once even
// while a callback hangs; the hung one is killed at the timeout and the
// next still runs, with the arguments and environment of the contract.
func TestCallbacksRunInOrderBoundedAndNeverBlock(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "calls")
	script := filepath.Join(dir, "cb.sh")
	body := "#!/bin/sh\n" +
		"if [ \"$1\" = on_stop ]; then sleep 30; fi\n" +
		"echo \"$PHAROS_MEMBER $* $PHAROS_ROLE\" >> " + out + "\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	r := newCallbackRunner(Callbacks{OnStop: script, OnRoleChange: script, Timeout: 300 * time.Millisecond}, "n1", "c1", slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	t0 := time.Now()
	r.fire("on_stop", cluster.RolePrimary)
	r.fire("on_start", cluster.RoleReplica) // not configured: nothing runs
	r.fire("on_role_change", cluster.RoleReplica)
	if took := time.Since(t0); took > 50*time.Millisecond {
		t.Errorf("fire blocked for %v", took)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(out)
		if strings.Contains(string(b), "on_role_change") {
			if got, want := strings.TrimSpace(string(b)), "n1 on_role_change replica c1 replica"; got != want {
				t.Errorf("calls %q, want %q (the hung on_stop killed, never finishing)", got, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("on_role_change never ran after the hung on_stop; calls: %q", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCallbackQueueDropsWhenFull: a flood of events never blocks the loop.
func TestCallbackQueueDropsWhenFull(t *testing.T) {
	r := newCallbackRunner(Callbacks{OnStart: "/bin/true"}, "n1", "c1", slog.New(slog.DiscardHandler))
	t0 := time.Now()
	for range callbackQueueSize * 3 {
		r.fire("on_start", cluster.RolePrimary)
	}
	if took := time.Since(t0); took > 50*time.Millisecond {
		t.Errorf("fire blocked for %v with nobody running the queue", took)
	}
	if len(r.queue) != callbackQueueSize {
		t.Errorf("queue holds %d, want %d", len(r.queue), callbackQueueSize)
	}
}

// TestCallbackEnvironmentHoldsNoSecret: a callback that dumps its
// environment finds the contract's variables and none of the PHAROS_*
// secrets the agent was given, even while they are still in the agent's
// own environment.
func TestCallbackEnvironmentHoldsNoSecret(t *testing.T) {
	secrets := map[string]string{
		"PHAROS_SUPERUSER_PASSWORD": "su-secret", "PHAROS_REPLICATION_PASSWORD": "repl-secret",
		"PHAROS_API_TOKEN": "token-secret", "PHAROS_ETCD_PASSWORD": "etcd-secret",
	}
	for k, v := range secrets {
		t.Setenv(k, v)
	}
	t.Setenv("PHAROS_NOT_A_SECRET", "kept")
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	script := filepath.Join(dir, "cb.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nenv > "+out+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := newCallbackRunner(Callbacks{OnStart: script, Timeout: 5 * time.Second}, "n1", "c1", slog.New(slog.DiscardHandler))
	r.exec(t.Context(), callbackJob{"on_start", cluster.RolePrimary})
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	env := string(b)
	for k, v := range secrets {
		if strings.Contains(env, k) || strings.Contains(env, v) {
			t.Errorf("the callback's environment holds %s", k)
		}
	}
	for _, want := range []string{"PHAROS_MEMBER=n1", "PHAROS_ROLE=primary", "PHAROS_CLUSTER=c1", "PHAROS_NOT_A_SECRET=kept"} {
		if !strings.Contains(env, want+"\n") {
			t.Errorf("the callback's environment lacks %s", want)
		}
	}
}
