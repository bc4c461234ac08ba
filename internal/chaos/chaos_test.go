// Package chaos runs a seeded, bounded, randomized schedule of faults
// against a local pharos cluster in synchronous mode while writes go
// through the proxy, and judges the run: no acknowledged write lost, no two
// nodes accepting writes at the same time.
//
//	go test -run TestChaos ./internal/chaos                       # short, fixed seed (part of make test)
//	make chaos DURATION=30m SEED=42                                # the long run
//
// It owns the fault menu and the verdict; the cluster is internal/localha's,
// the write probe and the checkers bench's.
package chaos_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/bench"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/faultnet"
	"github.com/pharos-ha/pharos/internal/freeport"
	"github.com/pharos-ha/pharos/internal/localha"
)

var (
	duration = flag.Duration("chaos.duration", 0, "run faults for this long (0: -chaos.faults faults)")
	faults   = flag.Int("chaos.faults", 4, "number of faults when -chaos.duration is 0")
	seed     = flag.Uint64("chaos.seed", 1, "seed of the fault schedule")
	kinds    = flag.String("chaos.kinds", "", "comma-separated fault kinds to draw from (default: all)")
)

var pharosBin string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "pharos-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if pharosBin, err = localha.BuildPharos(dir, false); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const clusterName = "chaos"

// env is the cluster under test.
type env struct {
	t       *testing.T
	etcd    *etcdlocal.Cluster
	cli     *clientv3.Client
	keys    cluster.Keys
	ha      *localha.Cluster
	relays  map[string][]*faultnet.Relay // per node, one per etcd member
	rw      string
	proxy   *localha.Proxy
	proxyMu sync.Mutex
	dir     string
}

func startEnv(t *testing.T) *env {
	dir, err := os.MkdirTemp("", "pharos-chaos-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() {
		if !t.Failed() || os.Getenv("PHAROS_KEEP_CHAOS") == "" {
			os.RemoveAll(dir)
		} else {
			t.Logf("kept %s", dir)
		}
	})
	ctx := context.Background()
	e := &env{t: t, dir: dir, relays: map[string][]*faultnet.Relay{}}
	e.keys, _ = cluster.NewKeys(clusterName)
	quiet := slog.New(slog.DiscardHandler)
	if e.etcd, err = etcdlocal.Start(ctx, etcdlocal.Options{Dir: filepath.Join(dir, "etcd"), Members: 3}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.etcd.Close() })
	if e.cli, err = e.etcd.Client(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cli.Close() })
	nodeEtcd := map[string][]string{}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("n%d", i)
		for _, ep := range e.etcd.Endpoints() {
			r, err := faultnet.Start(strings.TrimPrefix(ep, "http://"), quiet)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close() })
			e.relays[name] = append(e.relays[name], r)
			nodeEtcd[name] = append(nodeEtcd[name], "http://"+r.Addr())
		}
	}
	e.ha, err = localha.Start(ctx, localha.Options{
		Binary: pharosBin, Dir: filepath.Join(dir, "nodes"), Nodes: 3, Cluster: clusterName,
		Etcd: e.etcd.Endpoints(), NodeEtcd: nodeEtcd, RestartDelay: -1,
		AgentArgs: []string{"--watchdog", "required", "--watchdog-driver", "software", "--auto-reinit=true"},
		Logger:    quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range e.ha.Nodes() {
				t.Logf("--- agent %s (tail):\n%s", n.Name, n.Tail(4000))
			}
		}
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.ha.Close(cctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	port, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	e.rw = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := e.startProxy(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.stopProxy(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// startProxy starts the proxy on e.rw. It runs on the fault goroutine
// too (proxy-restart), so it reports errors rather than failing the test.
func (e *env) startProxy() error {
	e.proxyMu.Lock()
	defer e.proxyMu.Unlock()
	p, err := localha.StartProxy(pharosBin, filepath.Join(e.dir, "proxy.log"), "--source", "pharos", "--etcd", strings.Join(e.etcd.Endpoints(), ","),
		"--cluster", clusterName, "--rw-listen", e.rw, "--ro-listen", "", "--metrics-listen", "",
		"--route-wait", "10s", "--drain-timeout", "1s")
	if err != nil {
		return err
	}
	e.proxy = p
	return nil
}

func (e *env) stopProxy() error {
	e.proxyMu.Lock()
	defer e.proxyMu.Unlock()
	if e.proxy == nil {
		return nil
	}
	err := e.proxy.Stop()
	e.proxy = nil
	return err
}

func (e *env) status() (clusterstate.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return clusterstate.Status(ctx, e.cli, e.keys)
}

// waitHealthy waits for a leader running as primary, every member a replica
// streaming from it, and (synchronous mode) a synchronous standby.
func (e *env) waitHealthy(timeout time.Duration, needSync bool) (string, error) {
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		st, err := e.status()
		if err == nil && st.Leader != nil {
			lead, ok := st.Member(st.Leader.Name)
			good := ok && lead.Role == cluster.RolePrimary && len(st.Members) == 3 &&
				(!needSync || st.Sync != nil && st.Sync.Leader == st.Leader.Name && len(st.Sync.Standbys) == 1)
			var parts []string
			for _, m := range st.Members {
				parts = append(parts, m.Name+"="+string(m.Role)+"/"+m.State)
				if m.Name != st.Leader.Name && !m.StreamsFrom(st.Leader.Name) {
					good = false
				}
			}
			last = strings.Join(parts, " ")
			if st.Sync != nil {
				last += fmt.Sprintf(" sync=%v", st.Sync.Standbys)
			}
			if good {
				return st.Leader.Name, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", fmt.Errorf("cluster not healthy within %v: %s", timeout, last)
}

// fault is one entry of the menu: inject returns a heal step run after
// hold (nil when the fault heals by itself).
type fault struct {
	kind   string
	inject func(e *env, leader string, rnd *rand.Rand) (heal func() error, err error)
}

func signalAll(pids []int, sig syscall.Signal) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, sig)
	}
}

// restartAgent brings a killed agent back once it is gone.
func restartAgent(n *localha.Node) func() error {
	return func() error {
		if n.AgentPid() != 0 {
			_ = n.KillAgent()
		}
		return n.StartAgent()
	}
}

// pick returns the leader or, one time in three, a replica.
func pick(e *env, leader string, rnd *rand.Rand) *localha.Node {
	if rnd.IntN(3) == 0 {
		var reps []*localha.Node
		for _, n := range e.ha.Nodes() {
			if n.Name != leader {
				reps = append(reps, n)
			}
		}
		return reps[rnd.IntN(len(reps))]
	}
	return e.ha.Node(leader)
}

var menu = []fault{
	{"kill-postmaster", func(e *env, leader string, rnd *rand.Rand) (func() error, error) {
		return nil, pick(e, leader, rnd).KillPostmaster()
	}},
	{"kill-agent", func(e *env, leader string, rnd *rand.Rand) (func() error, error) {
		n := pick(e, leader, rnd)
		return restartAgent(n), n.KillAgent()
	}},
	{"kill-node", func(e *env, leader string, rnd *rand.Rand) (func() error, error) {
		n := pick(e, leader, rnd)
		return restartAgent(n), n.KillNode()
	}},
	{"stop-agent", func(e *env, leader string, rnd *rand.Rand) (func() error, error) {
		n := pick(e, leader, rnd)
		return func() error { return n.SignalAgent(syscall.SIGCONT) }, n.SignalAgent(syscall.SIGSTOP)
	}},
	{"freeze-node", func(e *env, leader string, rnd *rand.Rand) (func() error, error) {
		pids := pick(e, leader, rnd).Pids()
		signalAll(pids, syscall.SIGSTOP)
		return func() error { signalAll(pids, syscall.SIGCONT); return nil }, nil
	}},
	{"etcd-member-loss", func(e *env, leader string, rnd *rand.Rand) (func() error, error) {
		i := rnd.IntN(3)
		return func() error { return e.etcd.StartMember(context.Background(), i) }, e.etcd.StopMember(i)
	}},
	{"etcd-cut", func(e *env, leader string, rnd *rand.Rand) (func() error, error) {
		n := pick(e, leader, rnd)
		for _, r := range e.relays[n.Name] {
			r.Cut()
		}
		return func() error {
			for _, r := range e.relays[n.Name] {
				r.Restore()
			}
			return nil
		}, nil
	}},
	{"switchover", func(e *env, leader string, rnd *rand.Rand) (func() error, error) {
		out, err := exec.Command(pharosBin, "ctl", "--etcd", strings.Join(e.etcd.Endpoints(), ","), "--cluster", clusterName,
			"switchover", "--force").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("ctl switchover: %v: %s", err, out)
		}
		return nil, nil
	}},
	{"proxy-restart", func(e *env, leader string, rnd *rand.Rand) (func() error, error) {
		if err := e.stopProxy(); err != nil {
			return nil, err
		}
		return nil, e.startProxy()
	}},
}

// splitProber writes directly to every node (not through the proxy) and
// records which accepted: two nodes accepting in the same span is a split
// brain. Its verdict means something only for nodes it saw accept writes,
// so it also counts, per node, what became of its attempts.
type splitProber struct {
	mu       sync.Mutex
	accepts  []bench.Accept
	outcomes map[string]map[probeOutcome]int // by node
}

// probeOutcome classifies an attempt that was not accepted.
type probeOutcome string

const (
	probeUnreachable probeOutcome = "unreachable" // no session: refused, timed out, starting up or shutting down
	probeReadOnly    probeOutcome = "read-only"   // SQLSTATE 25006: a standby, or a demoted primary
	probeOther       probeOutcome = "other"       // any other error, timeouts of the write included
)

func (p *splitProber) run(ctx context.Context, e *env) {
	var wg sync.WaitGroup
	for _, n := range e.ha.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dsn := n.DSN()
			for ctx.Err() == nil {
				p.try(ctx, dsn, n.Name)
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	wg.Wait()
}

func (p *splitProber) try(run context.Context, dsn, node string) {
	ctx, cancel := context.WithTimeout(run, 400*time.Millisecond)
	defer cancel()
	failed := func(o probeOutcome) {
		if run.Err() == nil { // an attempt cut short by the end of the run says nothing
			p.count(node, o)
		}
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		failed(probeUnreachable)
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// A local commit: a stale primary that accepts the write acknowledges
	// it whether or not a synchronous standby would have. Waiting for one
	// would hide exactly the primary cut off from its standby, whose
	// commits then hang until the probe gives up.
	if _, err := conn.Exec(ctx, "SET synchronous_commit = local"); err != nil {
		failed(classify(err))
		return
	}
	sent := time.Now()
	if _, err := conn.Exec(ctx, "INSERT INTO pharos_split(node) VALUES ($1)", node); err != nil {
		failed(classify(err))
		return
	}
	p.mu.Lock()
	p.accepts = append(p.accepts, bench.Accept{Node: node, Sent: sent, Acked: time.Now()})
	p.mu.Unlock()
}

func classify(err error) probeOutcome {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "25006" {
		return probeReadOnly
	}
	return probeOther
}

func (p *splitProber) count(node string, o probeOutcome) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.outcomes == nil {
		p.outcomes = map[string]map[probeOutcome]int{}
	}
	if p.outcomes[node] == nil {
		p.outcomes[node] = map[probeOutcome]int{}
	}
	p.outcomes[node][o]++
}

// acceptedBy counts the accepted writes per node, of those sent within
// one of spans (all of them when spans is nil).
func acceptedBy(accepts []bench.Accept, nodes []string, spans [][2]time.Time) string {
	n := map[string]int{}
	for _, a := range accepts {
		in := spans == nil
		for _, sp := range spans {
			in = in || !a.Sent.Before(sp[0]) && !a.Sent.After(sp[1])
		}
		if in {
			n[a.Node]++
		}
	}
	parts := make([]string, len(nodes))
	for i, name := range nodes {
		parts[i] = fmt.Sprintf("%s=%d", name, n[name])
	}
	return strings.Join(parts, " ")
}

type row struct {
	count       int
	maxOutage   time.Duration
	lost        int
	splitBrains int
	spans       [][2]time.Time
}

// TestChaos runs the schedule and prints one line per fault kind.
func TestChaos(t *testing.T) {
	e := startEnv(t)
	leader, err := e.waitHealthy(3*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	out, cerr := exec.Command(pharosBin, "ctl", "--etcd", strings.Join(e.etcd.Endpoints(), ","), "--cluster", clusterName,
		"edit-config", "synchronous_mode=true", "--force").CombinedOutput()
	if cerr != nil {
		t.Fatalf("enable synchronous mode: %v: %s", cerr, out)
	}
	if leader, err = e.waitHealthy(time.Minute, true); err != nil {
		t.Fatal(err)
	}
	{
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := pgx.Connect(ctx, e.ha.SuperDSN(e.rw))
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS pharos_split (id bigserial PRIMARY KEY, node text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
		conn.Close(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	menuIn := menu
	if *kinds != "" {
		menuIn = nil
		for _, f := range menu {
			if slices.Contains(strings.Split(*kinds, ","), f.kind) {
				menuIn = append(menuIn, f)
			}
		}
		if len(menuIn) == 0 {
			t.Fatalf("-chaos.kinds %q names no fault of the menu", *kinds)
		}
	}
	rnd := rand.New(rand.NewPCG(*seed, *seed^0x9e3779b97f4a7c15))
	prober := &splitProber{}
	pctx, stopProber := context.WithCancel(context.Background())
	proberDone := make(chan struct{})
	go func() { prober.run(pctx, e); close(proberDone) }()
	defer func() { stopProber(); <-proberDone }()

	// The leaders the run saw healthy, each primary for a while (at
	// least the probe's lead-in before the next fault): the prober must
	// have had writes accepted by every one of them, or its verdict of
	// no split brain says nothing about them.
	primaries := map[string]bool{leader: true}
	rows := map[string]*row{}
	start := time.Now()
	for i := 0; ; i++ {
		if *duration > 0 && time.Since(start) > *duration || *duration == 0 && i >= *faults {
			break
		}
		f := menuIn[rnd.IntN(len(menuIn))]
		hold := time.Duration(2+rnd.IntN(5)) * time.Second
		var heal func() error
		var faultStart time.Time
		rep, err := bench.RunFailover(context.Background(), bench.FailoverOptions{
			DSN: e.ha.SuperDSN(e.rw), Before: 500 * time.Millisecond, After: 90 * time.Second, Settle: time.Second,
			Fault: func(ctx context.Context) error {
				faultStart = time.Now()
				h, err := f.inject(e, leader, rnd)
				if err != nil {
					return err
				}
				heal = h
				if heal != nil {
					select {
					case <-ctx.Done():
					case <-time.After(hold):
					}
					return heal()
				}
				return nil
			},
		})
		if err != nil {
			t.Fatalf("fault %d (%s): %v", i, f.kind, err)
		}
		if rep.FaultErr != "" {
			t.Fatalf("fault %d (%s): %s", i, f.kind, rep.FaultErr)
		}
		r := rows[f.kind]
		if r == nil {
			r = &row{}
			rows[f.kind] = r
		}
		r.count++
		r.maxOutage = max(r.maxOutage, rep.MaxOutage)
		r.lost += len(rep.Lost)
		if leader, err = e.waitHealthy(2*time.Minute, true); err != nil {
			t.Fatalf("after fault %d (%s): %v", i, f.kind, err)
		}
		primaries[leader] = true
		r.spans = append(r.spans, [2]time.Time{faultStart, time.Now()})
		t.Logf("fault %d %-16s hold %v: outage %v, lost %d, leader now %s", i, f.kind, hold, rep.MaxOutage.Round(time.Millisecond), len(rep.Lost), leader)
	}
	stopProber()
	<-proberDone

	// The prober has stopped: its results are read without the lock.
	windows := bench.FindSplitBrain(prober.accepts, 500*time.Millisecond)
	var nodeNames []string
	for _, n := range e.ha.Nodes() {
		nodeNames = append(nodeNames, n.Name)
	}
	accepted := map[string]int{}
	for _, a := range prober.accepts {
		accepted[a.Node]++
	}
	for _, name := range nodeNames {
		if primaries[name] && accepted[name] == 0 {
			o := prober.outcomes[name]
			t.Errorf("the split-brain prober never had a write accepted by %s, which led during the run (%d attempts unreachable, %d read-only, %d other errors): it proves nothing about that node",
				name, o[probeUnreachable], o[probeReadOnly], o[probeOther])
		}
	}
	for _, w := range windows {
		attributed := false
		for _, r := range rows {
			for _, sp := range r.spans {
				if !w.End.Before(sp[0]) && !w.Start.After(sp[1]) {
					r.splitBrains++
					attributed = true
				}
			}
		}
		t.Errorf("split brain: %s and %s both accepted writes from %s to %s (%v), attributed: %v",
			w.A, w.B, w.Start.Format(time.RFC3339Nano), w.End.Format(time.RFC3339Nano), w.Duration(), attributed)
	}

	var names []string
	for k := range rows {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "chaos run: seed %d, %v, synchronous mode\n", *seed, time.Since(start).Round(time.Second))
	fmt.Fprintf(&b, "%-18s %5s %12s %10s %12s  %s\n", "FAULT", "COUNT", "MAX OUTAGE", "ACKED LOST", "SPLIT-BRAIN", "PROBER ACCEPTS (fault to healthy)")
	total := 0
	for _, k := range names {
		r := rows[k]
		fmt.Fprintf(&b, "%-18s %5d %12v %10d %12d  %s\n", k, r.count, r.maxOutage.Round(time.Millisecond), r.lost, r.splitBrains,
			acceptedBy(prober.accepts, nodeNames, r.spans))
		total += r.lost
		if r.lost > 0 {
			t.Errorf("%s: %d acknowledged writes lost in synchronous mode", k, r.lost)
		}
	}
	var led []string
	for _, name := range nodeNames {
		if primaries[name] {
			led = append(led, name)
		}
	}
	fmt.Fprintf(&b, "split-brain prober (direct writes, synchronous_commit = local), whole run; led: %s\n", strings.Join(led, " "))
	for _, name := range nodeNames {
		o := prober.outcomes[name]
		fmt.Fprintf(&b, "  %-4s accepted %5d, read-only %5d, unreachable %5d, other errors %5d\n",
			name, accepted[name], o[probeReadOnly], o[probeUnreachable], o[probeOther])
	}
	fmt.Print(b.String())
	t.Log("\n" + b.String())
	if total == 0 && len(windows) == 0 && !t.Failed() {
		t.Logf("verdict: no acknowledged write lost, no split brain (%d direct write accepts checked, every leader's among them)", len(prober.accepts))
	}
}
