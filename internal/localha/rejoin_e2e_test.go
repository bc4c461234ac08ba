package localha_test

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	frozenFor  = flag.Duration("frozen.for", 12*time.Second, "how long TestRejoinEndToEnd keeps the leader's node stopped")
	frozenRuns = flag.Int("frozen.runs", 1, "how many times TestRejoinEndToEnd freezes the leader's node")
)

// TestRejoinEndToEnd brings members back the two ways that must never
// destroy data on evidence the agent has not checked, on a cluster set up
// as make demo runs it (required software watchdog, auto_reinit on).
//
// The frozen host of issue 12: every process of the leader's node — agent,
// watchdog, postmaster, backends — is stopped with SIGSTOP for 12 s while
// writes run through the proxy, then continued. The thawed watchdog kills
// the old postmaster and the agent finds a new leader: the node must come
// back by pg_rewind, with no clone: the same data directory (inode), no
// clone started in its agent's log, pharos_agent_reclones_total unchanged
// and one more rewind done.
//
// Then POST /reinitialize, which goes through Decide: refused on the
// leader, carried out on a replica (a new data directory, counted as a
// reinitialize reclone, streaming again).
func TestRejoinEndToEnd(t *testing.T) {
	e := startHA(t, 3, "--watchdog", "required", "--watchdog-driver", "software", "--auto-reinit=true")
	ctx := context.Background()
	leader := e.waitHealthy(t, time.Time{}, 2*time.Minute)

	for run := 1; run <= *frozenRuns; run++ {
		t.Run(fmt.Sprintf("frozen leader's node rejoins by rewind #%d", run), func(t *testing.T) {
			leader = e.freezeLeader(t, ctx, leader)
		})
	}

	t.Run("reinitialize through the REST API", func(t *testing.T) {
		if code, body := postJSON(t, e.ha.Node(leader).APIURL+"/reinitialize", e.ha.APIUser, e.ha.APIPassword); code != 409 ||
			!strings.Contains(body, "this member leads") {
			t.Fatalf("POST /reinitialize on the leader: %d %q, want 409 saying it leads", code, body)
		}
		victim := e.replicas(leader)[0]
		// A file of ours in the data directory goes with a wipe (an inode
		// number is no evidence: a new directory may get the old one's).
		marker := filepath.Join(victim.DataDir, "pharos-test-marker")
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		clones0 := countLines(t, victim.LogPath, cloneStarted)
		since := time.Now()
		if code, body := postJSON(t, victim.APIURL+"/reinitialize", e.ha.APIUser, e.ha.APIPassword); code != 200 {
			t.Fatalf("POST /reinitialize on replica %s: %d %q", victim.Name, code, body)
		}
		if _, err := os.Stat(marker); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the data directory of %s still holds the file put there before reinitialize (%v): it was not made anew", victim.Name, err)
		}
		// The same evidence the frozen-node check counts must show this
		// clone, or that check's silence would prove nothing.
		if n := countLines(t, victim.LogPath, cloneStarted); n != clones0+1 {
			t.Errorf("reinitialize of %s logged %d clones (%q), want 1", victim.Name, n-clones0, cloneStarted)
		}
		m := httpBody(t, victim.APIURL+"/metrics")
		if got := metricValue(m, `pharos_agent_reclones_total{reason="reinitialize"}`); got != 1 {
			t.Errorf(`pharos_agent_reclones_total{reason="reinitialize"} = %v, want 1`, got)
		}
		if got := e.waitHealthy(t, since, time.Minute); got != leader {
			t.Errorf("the leader changed during a replica's reinitialize: %s → %s", leader, got)
		}
		e.checkTruth(t, ctx)
	})
}

// freezeLeader freezes the leader's node for frozenFor under writes,
// checks it rejoined by rewind, and returns the new leader.
func (e *haEnv) freezeLeader(t *testing.T, ctx context.Context, leader string) string {
	old := e.ha.Node(leader)
	var before syscall.Stat_t
	if err := syscall.Stat(old.DataDir, &before); err != nil {
		t.Fatal(err)
	}
	agentPid := old.AgentPid()
	m0 := httpBody(t, old.APIURL+"/metrics")
	reclones0, done0 := metricSum(t, m0, "pharos_agent_reclones_total"), metricValue(m0, `pharos_agent_rewinds_total{outcome="done"}`)
	clones0 := countLines(t, old.LogPath, cloneStarted)

	var pids []int
	thawed := make(chan struct{})
	thaw := func() {
		select {
		case <-thawed:
		default:
			close(thawed)
			signalAll(pids, syscall.SIGCONT)
		}
	}
	defer thaw()
	rep := e.probe(t, "leader's node frozen", func(context.Context) error {
		pids = old.Pids()
		if len(pids) < 3 {
			return fmt.Errorf("leader %s has only processes %v (want agent, watchdog, postmaster…)", leader, pids)
		}
		signalAll(pids, syscall.SIGSTOP)
		time.AfterFunc(*frozenFor, thaw)
		return nil
	})
	<-thawed
	if rep.NewPrimary == "" || rep.NewPrimary == leader {
		t.Fatalf("writes did not move off the frozen leader (after: %q)", rep.NewPrimary)
	}
	thawAt := time.Now()
	newLeader := e.waitHealthy(t, thawAt, 2*time.Minute)
	e.checkTruth(t, ctx)

	if pid := old.AgentPid(); pid != agentPid {
		t.Fatalf("the frozen node's agent was replaced (%d → %d): its counters start over", agentPid, pid)
	}
	var after syscall.Stat_t
	if err := syscall.Stat(old.DataDir, &after); err != nil || after.Ino != before.Ino {
		t.Errorf("the data directory was wiped and made anew (inode %d → %d, %v): a clone ran", before.Ino, after.Ino, err)
	}
	m := httpBody(t, old.APIURL+"/metrics")
	reclones, done := metricSum(t, m, "pharos_agent_reclones_total"), metricValue(m, `pharos_agent_rewinds_total{outcome="done"}`)
	if reclones != reclones0 {
		t.Errorf("pharos_agent_reclones_total went from %v to %v on the thawed node", reclones0, reclones)
	}
	if done < done0+1 {
		t.Errorf(`pharos_agent_rewinds_total{outcome="done"} went from %v to %v: the node did not rejoin by rewind`, done0, done)
	}
	if n := countLines(t, old.LogPath, cloneStarted); n != clones0 {
		t.Errorf("the thawed node's agent logged %d more clones (%q): a clone ran", n-clones0, cloneStarted)
	}
	t.Logf("frozen %v: outage %v, %d acknowledged writes, %d lost (checked %v); %s rejoined (rewinds done %v, retried %v), new leader %s",
		*frozenFor, rep.MaxOutage.Round(time.Millisecond), rep.Acked, len(rep.Lost), rep.Checked, leader,
		done, metricValue(m, `pharos_agent_rewinds_total{outcome="retry"}`), newLeader)
	return newLeader
}

// cloneStarted is the agent's log line for every clone it starts
// (pg_basebackup's own output follows it). Other lines name pg_basebackup
// too, such as the warning about libpq's require_auth.
const cloneStarted = "msg=cloning "

// postJSON POSTs an empty JSON body with basic auth, as ctl does.
func postJSON(t *testing.T, url, user, password string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(user, password)
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue reads one sample of the Prometheus text exposition; -1 when
// it is absent.
func metricValue(body, series string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// metricSum adds every series of a metric; it fails the test when there
// is none (an absent counter proves nothing).
func metricSum(t *testing.T, body, name string) float64 {
	t.Helper()
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? ([0-9.e+-]+)$`)
	sum, n := 0.0, 0
	for _, line := range strings.Split(body, "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			sum += v
			n++
		}
	}
	if n == 0 {
		t.Fatalf("no %s series in /metrics", name)
	}
	return sum
}

func countLines(t *testing.T, path, substr string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			n++
		}
	}
	return n
}

func signalAll(pids []int, sig syscall.Signal) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, sig)
	}
}
