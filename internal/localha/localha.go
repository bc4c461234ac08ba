// Package localha runs a whole pharos cluster on loopback for the demo,
// the end-to-end tests and the chaos runs: one `pharos agent` process per
// node, supervised the way systemd would (a dead agent is restarted after a
// pause), against etcd endpoints the caller provides.
//
// It owns the agents' processes, their directories and the faults tests
// inject into them (SIGKILL of an agent, of a postmaster, SIGSTOP). It must
// not know HA rules: what the agents do is theirs, and tests judge it
// through etcd and SQL.
package localha

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pharos-ha/pharos/internal/freeport"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// Options configure Start.
type Options struct {
	// Binary is the pharos executable the agents run.
	Binary string
	// Dir holds one directory per node (data, logs) and the secrets. It
	// must be reachable by the postgres account when running as root.
	Dir     string
	Nodes   int
	Cluster string
	Etcd    []string
	// NodeEtcd replaces Etcd for one node, by name (e.g. through a relay
	// that can cut it off).
	NodeEtcd map[string][]string
	// RestartDelay is the pause before a dead agent is started again; 0
	// means 5 s (longer than the default ttl, so a killed node fails over first), negative means never (a test restarts it itself).
	RestartDelay time.Duration
	// AgentArgs are extra flags for every agent (timing, log level...);
	// NodeArgs more for one node, by name (n1, n2...).
	AgentArgs []string
	NodeArgs  map[string][]string
	// ProxyAuth gives the agents a proxy_auth_password, so that bootstrap
	// creates ProxyAuthUser and pharos.get_auth for a proxy's auth_user.
	ProxyAuth bool
	Logger    *slog.Logger
}

// Cluster is the set of supervised agents.
type Cluster struct {
	// Static after Start.
	opts  Options
	nodes []*Node
	log   *slog.Logger
	// SuperUser and SuperPassword log in to every node.
	SuperUser, SuperPassword string
	// APIUser and APIPassword authorize the REST API's mutating calls.
	APIUser, APIPassword string
	// ProxyAuthUser and ProxyAuthPassword (also in ProxyAuthPasswordFile)
	// are a proxy's auth_user login, with Options.ProxyAuth; empty without.
	ProxyAuthUser, ProxyAuthPassword, ProxyAuthPasswordFile string

	wg sync.WaitGroup
}

// Node is one agent and its PostgreSQL.
type Node struct {
	// Static after Start.
	Name    string
	Dir     string
	DataDir string
	Port    int
	LogPath string // the agent's output
	// APIURL is the node's REST API.
	APIURL string
	args   []string
	c      *Cluster

	mu      sync.Mutex
	proc    *os.Process
	exited  chan struct{} // closed when proc exits
	stopped bool          // Close or a test stopped supervision
	starts  int
}

// Start writes the secrets, starts every agent and returns at once; the
// agents bootstrap on their own (see WaitReady-style helpers of callers).
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Nodes < 1 {
		return nil, errors.New("localha: at least one node")
	}
	if opts.RestartDelay == 0 {
		opts.RestartDelay = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	owner, err := pgproc.CurrentOwner()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := owner.CheckReachable(opts.Dir); err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, log: opts.Logger, SuperUser: "postgres", SuperPassword: randomSecret(),
		APIUser: "pharos", APIPassword: randomSecret()}
	apiFile := filepath.Join(opts.Dir, "api.password")
	if err := os.WriteFile(apiFile, []byte(c.APIPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	superFile := filepath.Join(opts.Dir, "superuser.password")
	replFile := filepath.Join(opts.Dir, "replication.password")
	if err := os.WriteFile(superFile, []byte(c.SuperPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(replFile, []byte(randomSecret()+"\n"), 0o600); err != nil {
		return nil, err
	}
	var authArgs []string
	if opts.ProxyAuth {
		c.ProxyAuthUser, c.ProxyAuthPassword = "pharos_auth", randomSecret()
		c.ProxyAuthPasswordFile = filepath.Join(opts.Dir, "proxy_auth.password")
		if err := os.WriteFile(c.ProxyAuthPasswordFile, []byte(c.ProxyAuthPassword+"\n"), 0o600); err != nil {
			return nil, err
		}
		authArgs = []string{"--proxy-auth-user", c.ProxyAuthUser, "--proxy-auth-password-file", c.ProxyAuthPasswordFile}
	}
	for i := range opts.Nodes {
		name := fmt.Sprintf("n%d", i+1)
		dir := filepath.Join(opts.Dir, name)
		if err := owner.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		ports, err := freeport.Distinct(2)
		if err != nil {
			return nil, err
		}
		apiAddr := "127.0.0.1:" + strconv.Itoa(ports[1])
		n := &Node{Name: name, Dir: dir, DataDir: filepath.Join(dir, "data"), Port: ports[0],
			LogPath: filepath.Join(dir, "agent.log"), APIURL: "http://" + apiAddr, c: c}
		etcd := opts.Etcd
		if e, ok := opts.NodeEtcd[name]; ok {
			etcd = e
		}
		n.args = append([]string{"agent",
			"--name", name, "--cluster", opts.Cluster, "--etcd", strings.Join(etcd, ","),
			"--data-dir", n.DataDir, "--pg-port", strconv.Itoa(ports[0]),
			"--superuser-password-file", superFile, "--replication-password-file", replFile,
			"--api-listen", apiAddr, "--api-username", c.APIUser, "--api-password-file", apiFile,
		}, authArgs...)
		n.args = append(n.args, opts.AgentArgs...)
		n.args = append(n.args, opts.NodeArgs[name]...)
		c.nodes = append(c.nodes, n)
	}
	for _, n := range c.nodes {
		if err := n.spawn(); err != nil {
			c.Close(context.WithoutCancel(ctx))
			return nil, err
		}
		c.wg.Add(1)
		go n.supervise()
	}
	return c, nil
}

func randomSecret() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Nodes lists the nodes in name order.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// Node returns the node called name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func (n *Node) spawn() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.spawnLocked()
}

// spawnLocked starts the agent. It runs from a goroutine locked to its OS
// thread for the agent's lifetime, so that Pdeathsig (which fires when the
// creating thread exits) sends SIGTERM to the agent if this supervisor
// dies: an orphaned agent stops cleanly instead of running on.
func (n *Node) spawnLocked() error {
	logf, err := os.OpenFile(n.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(n.c.opts.Binary, n.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a terminal's Ctrl-C reaches the supervisor only,
	// which then stops the agents in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	exited := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the agent
		err := cmd.Start()
		logf.Close()
		started <- err
		if err != nil {
			return
		}
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start agent %s: %w", n.Name, err)
	}
	n.proc, n.exited = cmd.Process, exited
	n.starts++
	n.c.log.Info("agent started", "node", n.Name, "pid", cmd.Process.Pid, "pg_port", n.Port)
	return nil
}

// supervise restarts the agent after RestartDelay whenever it exits,
// until Close.
func (n *Node) supervise() {
	defer n.c.wg.Done()
	for {
		n.mu.Lock()
		exited := n.exited
		n.mu.Unlock()
		<-exited
		n.mu.Lock()
		stop := n.stopped
		n.mu.Unlock()
		if stop || n.c.opts.RestartDelay < 0 {
			return
		}
		n.c.log.Info("agent exited; restarting", "node", n.Name, "after", n.c.opts.RestartDelay)
		time.Sleep(n.c.opts.RestartDelay)
		// Checked and spawned under one lock: Close either sees the new
		// process (and stops it) or this sees Close's mark.
		n.mu.Lock()
		if n.stopped {
			n.mu.Unlock()
			return
		}
		err := n.spawnLocked()
		n.mu.Unlock()
		if err != nil {
			n.c.log.Error("restart agent", "node", n.Name, "err", err)
			return
		}
	}
}

// StartAgent starts the agent again after it died, for clusters without
// automatic restarts (RestartDelay < 0).
func (n *Node) StartAgent() error {
	if n.AgentPid() != 0 {
		return fmt.Errorf("agent %s is running", n.Name)
	}
	return n.spawn()
}

// AgentPid is the agent's process id (0 when not running).
func (n *Node) AgentPid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	select {
	case <-n.exited:
		return 0
	default:
		return n.proc.Pid
	}
}

// Starts counts how many times the agent was started.
func (n *Node) Starts() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.starts
}

// SignalAgent sends sig to the agent process.
func (n *Node) SignalAgent(sig syscall.Signal) error {
	pid := n.AgentPid()
	if pid == 0 {
		return fmt.Errorf("agent %s is not running", n.Name)
	}
	return syscall.Kill(pid, sig)
}

// KillAgent SIGKILLs the agent and waits until it is gone; the supervisor
// restarts it after RestartDelay.
func (n *Node) KillAgent() error {
	n.mu.Lock()
	proc, exited := n.proc, n.exited
	n.mu.Unlock()
	if err := proc.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("agent %s survives SIGKILL", n.Name)
	}
}

// PostmasterPid reads postmaster.pid (0 when not running).
func (n *Node) PostmasterPid() int {
	pid, err := pgproc.PidFile(n.DataDir)
	if err != nil || !pgproc.ProcessAlive(pid) {
		return 0
	}
	return pid
}

// KillPostmaster SIGKILLs the postmaster only, as a crash of it does: its
// children notice and exit on their own.
func (n *Node) KillPostmaster() error {
	pid := n.PostmasterPid()
	if pid == 0 {
		return fmt.Errorf("postgres of %s is not running", n.Name)
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// WatchdogLog is the software watchdog's log of the node.
func (n *Node) WatchdogLog() string { return filepath.Join(n.Dir, "watchdog.log") }

// KillNode SIGKILLs the agent and every PostgreSQL process of the node at
// once: the node is lost. The agent is restarted by the supervisor later.
func (n *Node) KillNode() error {
	pids := pgproc.ServerProcesses(n.DataDir)
	if err := n.SignalAgent(syscall.SIGKILL); err != nil {
		return err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return nil
}

// DSN is a superuser connection string to the node's PostgreSQL.
func (n *Node) DSN() string {
	return n.c.SuperDSN(net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port)))
}

// SuperDSN is a superuser connection string to addr (host:port): a node,
// or a proxy in front of the cluster.
func (c *Cluster) SuperDSN(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=postgres connect_timeout=3 sslmode=disable",
		host, port, c.SuperUser, c.SuperPassword)
}

// Close stops every agent with SIGTERM (each stops its PostgreSQL and
// hands over), waits up to the context, then kills what is left, agents
// and servers alike.
func (c *Cluster) Close(ctx context.Context) error {
	var live []*Node
	for _, n := range c.nodes {
		n.mu.Lock()
		n.stopped = true
		p := n.proc
		n.mu.Unlock()
		if p != nil {
			_ = p.Signal(syscall.SIGCONT) // a stopped agent cannot handle SIGTERM
			_ = p.Signal(syscall.SIGTERM)
			live = append(live, n)
		}
	}
	var errs []error
	for _, n := range live {
		n.mu.Lock()
		exited, p := n.exited, n.proc
		n.mu.Unlock()
		select {
		case <-exited:
		case <-ctx.Done():
			_ = p.Signal(syscall.SIGKILL)
			<-exited
			errs = append(errs, fmt.Errorf("agent %s did not stop in time", n.Name))
		}
	}
	c.wg.Wait()
	for _, n := range c.nodes {
		// A software watchdog of a killed agent counts down on its own;
		// it would fire and exit, but the cluster is going now.
		for _, pid := range watchdogProcesses(n.DataDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		for _, pid := range pgproc.KillServer(n.DataDir, 0) {
			errs = append(errs, fmt.Errorf("node %s: postgres process %d left running, killed", n.Name, pid))
		}
	}
	return errors.Join(errs...)
}

// watchdogProcesses lists `pharos watchdog --data-dir dataDir` processes.
func watchdogProcesses(dataDir string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) > 1 && args[1] == "watchdog" && slices.Contains(args, dataDir) {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// Tail returns the end of the node's agent log, for failure messages.
func (n *Node) Tail(max int) string {
	f, err := os.Open(n.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > int64(max) {
		_, _ = f.Seek(st.Size()-int64(max), io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// BuildPharos builds the pharos binary into dir for tests that run it as
// a process (race: with the race detector).
func BuildPharos(dir string, race bool) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go") //nolint:staticcheck // fallback when PATH has no go
	}
	bin := filepath.Join(dir, "pharos")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const pkg = "github.com/pharos-ha/pharos/cmd/pharos"
	if out, err := exec.CommandContext(ctx, goTool, append(args, pkg)...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", pkg, err, out)
	}
	return bin, nil
}

// Pids lists every process of the node: its agent, its PostgreSQL server
// and its software watchdog (what a frozen host freezes).
func (n *Node) Pids() []int {
	pids := append(pgproc.ServerProcesses(n.DataDir), watchdogProcesses(n.DataDir)...)
	if pid := n.AgentPid(); pid != 0 {
		pids = append(pids, pid)
	}
	return pids
}
