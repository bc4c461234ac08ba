package localha_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/localha"
)

// TestSuccessPathsEndToEnd runs, on one four-node cluster, the operator's
// calls whose refusals are tested elsewhere but whose success was not:
// synchronous_node_count 2 (two standbys named and waited for), a
// switchover scheduled with `ctl switchover --at` (not before its time,
// and soon after), and the agent's REST API doing a switchover, a failover
// and a restart of PostgreSQL (a new postmaster, on_restart run).
func TestSuccessPathsEndToEnd(t *testing.T) {
	cbDir := t.TempDir()
	calls := filepath.Join(cbDir, "calls")
	script := filepath.Join(cbDir, "on_restart.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$PHAROS_MEMBER $*\" >> "+calls+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e := startHA(t, 4, "--on-restart", script)
	ctx := context.Background()
	leader := e.waitHealthy(t, time.Time{}, 3*time.Minute)

	t.Run("synchronous_node_count 2 waits for both standbys", func(t *testing.T) {
		if code, out := e.ctlRun(t, "edit-config", "synchronous_mode=true", "synchronous_node_count=2", "--force"); code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		primary := e.ha.Node(leader)
		var standbys []string
		if !waitUntil(30*time.Second, func() bool {
			st := e.syncState(t)
			if st == nil || st.Leader != leader || len(st.Standbys) != 2 {
				return false
			}
			standbys = slices.Sorted(slices.Values(st.Standbys))
			return show(primary, "synchronous_standby_names") == fmt.Sprintf(`FIRST 2 ("%s", "%s")`, standbys[0], standbys[1])
		}) {
			t.Fatalf("sync key %+v, synchronous_standby_names %q: want two standbys in both", e.syncState(t), show(primary, "synchronous_standby_names"))
		}
		// The primary's own view: both standbys synchronous, the third
		// asynchronous.
		states := replicationStates(t, primary)
		var async *localha.Node
		for _, n := range e.replicas(leader) {
			want := "async"
			if slices.Contains(standbys, n.Name) {
				want = "sync"
			} else {
				async = n
			}
			if states[n.Name] != want {
				t.Errorf("pg_stat_replication on %s: %s is %q, want %q (all: %v)", leader, n.Name, states[n.Name], want, states)
			}
		}
		if async == nil {
			t.Fatalf("no asynchronous replica among %v", e.replicas(leader))
		}
		// Commits wait for each synchronous standby: with either one's
		// WAL receiver frozen a commit is not acknowledged, and it is
		// once it runs again; a frozen asynchronous one holds nothing up.
		for _, name := range standbys {
			withFrozenReceiver(t, e.ha.Node(name), func() {
				if o, err := tryWrite(primary, 1500*time.Millisecond); o != writeBlocked {
					t.Errorf("commit on %s with synchronous standby %s's WAL receiver frozen: %s (%v), want it not acknowledged", leader, name, o, err)
				}
			})
			if !waitUntil(15*time.Second, func() bool { return acceptsWrites(primary) }) {
				t.Errorf("commits still not acknowledged after %s's WAL receiver resumed", name)
			}
		}
		withFrozenReceiver(t, async, func() {
			if o, err := tryWrite(primary, 1500*time.Millisecond); o != writeAccepted {
				t.Errorf("commit on %s with asynchronous replica %s's WAL receiver frozen: %s (%v), want it acknowledged", leader, async.Name, o, err)
			}
		})
		if _, out := e.ctlRun(t, "list"); !strings.Contains(out, "synchronous mode: "+leader+" wait(s) for "+standbys[0]+", "+standbys[1]) {
			t.Errorf("ctl list does not show both synchronous standbys:\n%s", out)
		}
		// Off again: the switchovers below may go to any replica.
		if code, out := e.ctlRun(t, "edit-config", "synchronous_mode=false", "synchronous_node_count=null", "--force"); code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		if !waitUntil(15*time.Second, func() bool { return show(primary, "synchronous_standby_names") == "" && e.syncState(t) == nil }) {
			t.Fatalf("synchronous mode still on: %q, %+v", show(primary, "synchronous_standby_names"), e.syncState(t))
		}
	})

	t.Run("scheduled switchover fires at its time", func(t *testing.T) {
		target := e.replicas(leader)[0].Name
		// Whole seconds (--at is RFC 3339), at least 4 s ahead.
		at := time.Now().Add(5 * time.Second).Truncate(time.Second)
		if code, out := e.ctlRun(t, "switchover", "--to", target, "--at", at.Format(time.RFC3339), "--force"); code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		for time.Now().Before(at) {
			st, err := e.status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Leader == nil || st.Leader.Name != leader {
				t.Fatalf("leadership moved %v before the scheduled time (leader %+v)", time.Until(at).Round(time.Millisecond), st.Leader)
			}
			time.Sleep(50 * time.Millisecond)
		}
		e.waitLeader(t, target, 30*time.Second)
		e.waitHealthy(t, at, time.Minute)
		hist, err := clusterstate.History(ctx, e.cli, e.keys)
		if err != nil {
			t.Fatal(err)
		}
		last := hist[len(hist)-1]
		if last.Reason != "switchover" || last.NewLeader != target || last.OldLeader != leader {
			t.Fatalf("history entry %+v, want a switchover %s → %s", last, leader, target)
		}
		late := last.Time.Sub(at)
		t.Logf("scheduled for %s, %s led %v after it", at.Format(time.RFC3339), target, late.Round(time.Millisecond))
		if late < 0 || late > 10*time.Second {
			t.Errorf("switchover recorded %v after its scheduled time, want within [0, 10s]", late)
		}
		leader = target
	})

	t.Run("REST switchover", func(t *testing.T) {
		reps := e.replicas(leader)
		target := reps[len(reps)-1].Name
		code, body := e.apiPost(t, e.ha.Node(leader), "/switchover", fmt.Sprintf(`{"leader": %q, "candidate": %q}`, leader, target))
		if code != http.StatusOK || !strings.Contains(body, `Successfully switched over to "`+target+`"`) {
			t.Fatalf("POST /switchover: %d %s", code, body)
		}
		e.waitLeader(t, target, 30*time.Second)
		e.waitHealthy(t, time.Now(), time.Minute)
		e.lastHistory(t, "switchover", leader, target)
		leader = target
	})

	t.Run("REST failover", func(t *testing.T) {
		// Asked of a replica's agent, to a replica that is neither that
		// one nor the first in name order.
		reps := e.replicas(leader)
		via, target := reps[0], reps[len(reps)-1].Name
		code, body := e.apiPost(t, via, "/failover", fmt.Sprintf(`{"candidate": %q}`, target))
		if code != http.StatusOK || !strings.Contains(body, `Successfully failed over to "`+target+`"`) {
			t.Fatalf("POST /failover to %s through %s: %d %s", target, via.Name, code, body)
		}
		e.waitLeader(t, target, 30*time.Second)
		e.waitHealthy(t, time.Now(), time.Minute)
		e.lastHistory(t, "manual failover", leader, target)
		leader = target
	})

	t.Run("REST restart", func(t *testing.T) {
		for _, tc := range []struct {
			node *localha.Node
			role string
		}{
			{e.replicas(leader)[0], "replica"},
			{e.ha.Node(leader), "primary"},
		} {
			n := tc.node
			before := n.PostmasterPid()
			if before == 0 {
				t.Fatalf("%s has no postmaster", n.Name)
			}
			code, body := e.apiPost(t, n, "/restart", "{}")
			if code != http.StatusOK || body != "restarted successfully" {
				t.Fatalf("POST /restart on %s: %d %s", n.Name, code, body)
			}
			after := n.PostmasterPid()
			if after == 0 || after == before || processAlive(before) {
				t.Errorf("%s: postmaster %d before POST /restart, %d after (old alive: %v): not restarted", n.Name, before, after, processAlive(before))
			}
			want := n.Name + " on_restart " + tc.role + " " + clusterName
			if !waitUntil(10*time.Second, func() bool { b, _ := os.ReadFile(calls); return strings.Contains(string(b), want) }) {
				b, _ := os.ReadFile(calls)
				t.Errorf("on_restart %q not run; calls:\n%s", want, b)
			}
			if got := e.waitHealthy(t, time.Now(), time.Minute); got != leader {
				t.Fatalf("leader %s after restarting %s, want %s still", got, n.Name, leader)
			}
		}
		if !acceptsWrites(e.ha.Node(leader)) {
			t.Errorf("the restarted leader %s does not take writes", leader)
		}
		e.checkTruth(t, ctx)
	})
}

// waitLeader waits until the leader key names want (a request only
// starts the change; waitHealthy alone may see the old leader still).
func (e *haEnv) waitLeader(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	var last string
	if !waitUntil(timeout, func() bool {
		st, err := e.status(context.Background())
		if err != nil || st.Leader == nil {
			return false
		}
		last = st.Leader.Name
		return last == want
	}) {
		t.Fatalf("leader %q %v on, want %s", last, timeout, want)
	}
}

// lastHistory checks the newest history entry.
func (e *haEnv) lastHistory(t *testing.T, reason, from, to string) {
	t.Helper()
	hist, err := clusterstate.History(context.Background(), e.cli, e.keys)
	if err != nil {
		t.Fatal(err)
	}
	if last := hist[len(hist)-1]; last.Reason != reason || last.OldLeader != from || last.NewLeader != to {
		t.Errorf("history entry %+v, want %s %s → %s", last, reason, from, to)
	}
}

// apiPost makes an authenticated JSON POST to n's REST API and returns the
// status and the body.
func (e *haEnv) apiPost(t *testing.T, n *localha.Node, path, body string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.APIURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(e.ha.APIUser, e.ha.APIPassword)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s on %s: %v", path, n.Name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// replicationStates is the primary's pg_stat_replication: sync_state by
// application_name (the member name).
func replicationStates(t *testing.T, primary *localha.Node) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, primary.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT application_name, sync_state FROM pg_stat_replication")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var name, state string
	if _, err := pgx.ForEachRow(rows, []any{&name, &state}, func() error { out[name] = state; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// withFrozenReceiver runs fn with n's WAL receiver stopped (SIGSTOP): it
// acknowledges nothing, while the rest of the standby and its agent go on,
// so the leader keeps it as it is.
func withFrozenReceiver(t *testing.T, n *localha.Node, fn func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, n.DSN())
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	err = conn.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming'").Scan(&pid)
	conn.Close(ctx)
	if err != nil {
		t.Fatalf("%s's WAL receiver: %v", n.Name, err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Errorf("resume %s's WAL receiver %d: %v", n.Name, pid, err)
		}
	}()
	fn()
}
