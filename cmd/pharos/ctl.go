package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/ctl"
	"github.com/pharos-ha/pharos/internal/etcdclient"
)

// ctlSettings are ctl's config keys and flags: how to reach etcd and which
// cluster. Their defaults come from the environment (PHAROS_ETCD,
// PHAROS_CLUSTER), as the demo's demo.env sets them. The keys are those of the daemons' config files, so that
// `pharos ctl --config /etc/pharos/agent.yaml` works on a node.
type ctlSettings struct {
	EtcdSettings `yaml:",inline"`
	Cluster      string `yaml:"cluster"`

	// Timeout bounds each verb's etcd calls (flag only).
	Timeout time.Duration `yaml:"-"`
}

// ctlEnv is what a verb works with.
type ctlEnv struct {
	cli            *clientv3.Client
	keys           cluster.Keys
	stdin          io.Reader
	stdout, stderr io.Writer
	// interactive: stdin is a terminal, so changes can be confirmed there.
	interactive bool
	// timeout bounds each etcd call.
	timeout time.Duration
	// args are the verb's positional arguments (verbs with takesArgs).
	args []string
}

// call bounds one step of a verb by the timeout.
func (e ctlEnv) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.timeout)
}

// confirm asks on the terminal before a verb changes the cluster; scripts
// pass --force.
func (e ctlEnv) confirm(force bool, question string) error {
	if force {
		return nil
	}
	if !e.interactive {
		return usageErrorf("%s: not on a terminal, pass --force to confirm", question)
	}
	fmt.Fprintf(e.stderr, "%s [y/N] ", question)
	line, _ := bufio.NewReader(e.stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errCancelled
}

var errCancelled = errors.New("cancelled, nothing changed")

// ctlAction runs a verb once its flags are parsed; ctx is not bounded by
// the timeout (verbs that wait have their own bound).
type ctlAction func(ctx context.Context, env ctlEnv) error

type ctlVerb struct {
	name    string
	summary string
	// takesArgs: the verb reads positional arguments (key=value...).
	takesArgs bool
	// flags registers the verb's own flags and returns the action that
	// reads them.
	flags func(fs *flag.FlagSet) ctlAction
}

func ctlVerbs() []ctlVerb {
	return []ctlVerb{
		{"list", "members with role, state, timeline, lag and the leader", false, func(fs *flag.FlagSet) ctlAction {
			asJSON := fs.Bool("json", false, "print JSON instead of a table")
			watch := fs.Duration("watch", 0, "redraw every interval (e.g. 1s) until interrupted")
			return func(ctx context.Context, env ctlEnv) error {
				once := func() error {
					cctx, cancel := env.call(ctx)
					defer cancel()
					st, err := clusterstate.Status(cctx, env.cli, env.keys)
					if err != nil {
						return err
					}
					if *asJSON {
						return ctl.WriteJSON(env.stdout, st)
					}
					return ctl.WriteTable(env.stdout, st)
				}
				if *watch <= 0 {
					return once()
				}
				// A watch survives etcd hiccups: it says so and tries
				// again at the next tick, until Ctrl-C.
				for {
					if env.interactive {
						fmt.Fprint(env.stdout, "\033[H\033[2J") // clear the terminal
					}
					fmt.Fprintf(env.stdout, "%s (every %v, Ctrl-C stops)\n", time.Now().Format(time.RFC3339), *watch)
					if err := once(); err != nil {
						fmt.Fprintf(env.stdout, "error: %v\n", err)
					}
					select {
					case <-ctx.Done():
						return nil
					case <-time.After(*watch):
					}
					if !env.interactive {
						fmt.Fprintln(env.stdout)
					}
				}
			}
		}},
		{"history", "timeline switches, oldest first", false, func(fs *flag.FlagSet) ctlAction {
			asJSON := fs.Bool("json", false, "print JSON instead of a table")
			return func(ctx context.Context, env ctlEnv) error {
				ctx, cancel := env.call(ctx)
				defer cancel()
				h, err := clusterstate.History(ctx, env.cli, env.keys)
				if err != nil {
					return err
				}
				if *asJSON {
					return ctl.WriteHistoryJSON(env.stdout, h)
				}
				return ctl.WriteHistoryTable(env.stdout, h)
			}
		}},
		{"switchover", "planned change of leader: [--to M] [--at TIME] [--cancel]", false, ctlSwitchover},
		{"failover", "make --to M the leader, even with no leader left", false, ctlFailover},
		{"pause", "stop automatic failover and demotion", false, func(fs *flag.FlagSet) ctlAction { return ctlSetPause(fs, true) }},
		{"resume", "end a pause", false, func(fs *flag.FlagSet) ctlAction { return ctlSetPause(fs, false) }},
		{"show-config", "the dynamic configuration", false, func(fs *flag.FlagSet) ctlAction {
			return func(ctx context.Context, env ctlEnv) error {
				ctx, cancel := env.call(ctx)
				defer cancel()
				cfg, _, err := clusterstate.Config(ctx, env.cli, env.keys)
				if err != nil {
					return err
				}
				return ctl.WriteConfig(env.stdout, cfg)
			}
		}},
		{"edit-config", "set key=value... (pause, maximum_lag_on_failover, postgresql.parameters.<name>; null removes)", true, func(fs *flag.FlagSet) ctlAction {
			force := fs.Bool("force", false, "do not ask for confirmation")
			return func(ctx context.Context, env ctlEnv) error {
				// A mistyped key is refused before anyone is asked to confirm it.
				if err := clusterstate.CheckSettings(env.args); err != nil {
					return err
				}
				if err := env.confirm(*force, "Change "+strings.Join(env.args, " ")+" for every member?"); err != nil {
					return err
				}
				ctx, cancel := env.call(ctx)
				defer cancel()
				cfg, err := clusterstate.EditConfig(ctx, env.cli, env.keys, env.args)
				if err != nil {
					return err
				}
				return ctl.WriteConfig(env.stdout, cfg)
			}
		}},
	}
}

func ctlSwitchover(fs *flag.FlagSet) ctlAction {
	to := fs.String("to", "", "member to lead (default: the healthiest replica)")
	at := fs.String("at", "", "when: RFC 3339 time or +duration (default: now)")
	leader := fs.String("leader", "", "refuse unless this member leads")
	cancelIt := fs.Bool("cancel", false, "cancel the pending (scheduled) switchover")
	force := fs.Bool("force", false, "do not ask for confirmation")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for the new leader (0: do not wait)")
	maxLag := byteSize(-1)
	fs.Func("max-lag", "refuse a candidate lagging more (default: the cluster's maximum_lag_on_failover, else 1MB; 0 = no limit)", func(v string) error {
		b, err := parseByteSize(v)
		maxLag = b
		return err
	})
	return func(ctx context.Context, env ctlEnv) error {
		if *cancelIt {
			if err := env.confirm(*force, "Cancel the pending switchover?"); err != nil {
				return err
			}
			cctx, cancel := env.call(ctx)
			defer cancel()
			if err := clusterstate.CancelSwitchover(cctx, env.cli, env.keys); err != nil {
				return err
			}
			fmt.Fprintln(env.stdout, "switchover cancelled")
			return nil
		}
		now := time.Now()
		req := clusterstate.SwitchoverRequest{Leader: *leader, Candidate: *to, MaxLag: int64(maxLag), DefaultMaxLag: core.DefaultMaximumLagOnFailover}
		if *at != "" {
			t, err := ctl.ParseSchedule(*at, now)
			if err != nil {
				return usageErrorf("at: %v", err)
			}
			req.ScheduledAt = &t
		}
		cctx, cancel := env.call(ctx)
		defer cancel()
		st, err := clusterstate.Status(cctx, env.cli, env.keys)
		if err != nil {
			return err
		}
		from, target := "the leader", *to
		if st.Leader != nil {
			from = st.Leader.Name
		}
		if target == "" {
			target = "the healthiest replica"
		}
		when := ""
		if req.ScheduledAt != nil {
			when = " at " + req.ScheduledAt.Format(time.RFC3339)
		}
		if err := env.confirm(*force, fmt.Sprintf("Switch over from %s to %s%s?", from, target, when)); err != nil {
			return err
		}
		if err := clusterstate.RequestSwitchover(cctx, env.cli, env.keys, req, now); err != nil {
			return err
		}
		if req.ScheduledAt != nil || *wait == 0 {
			fmt.Fprintf(env.stdout, "switchover from %s to %s%s requested\n", from, target, when)
			return nil
		}
		return waitLeader(ctx, env, from, *wait, now)
	}
}

func waitLeader(ctx context.Context, env ctlEnv, from string, wait time.Duration, since time.Time) error {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	leader, err := clusterstate.WaitNewLeader(wctx, env.cli, env.keys, from)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%s leads now (%v after the request)\n", leader, time.Since(since).Round(time.Millisecond))
	return nil
}

func ctlFailover(fs *flag.FlagSet) ctlAction {
	to := fs.String("to", "", "member to lead (required)")
	force := fs.Bool("force", false, "do not ask for confirmation")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for the new leader (0: do not wait)")
	return func(ctx context.Context, env ctlEnv) error {
		if *to == "" {
			return usageErrorf("failover: --to is required")
		}
		cctx, cancel := env.call(ctx)
		defer cancel()
		st, err := clusterstate.Status(cctx, env.cli, env.keys)
		if err != nil {
			return err
		}
		from := ""
		question := fmt.Sprintf("Make %s the leader? Writes it never received are lost.", *to)
		if st.Leader != nil {
			from = st.Leader.Name
			question = fmt.Sprintf("Fail over from %s to %s?", from, *to)
		}
		if err := env.confirm(*force, question); err != nil {
			return err
		}
		now := time.Now()
		if err := clusterstate.RequestFailover(cctx, env.cli, env.keys, *to, now); err != nil {
			return err
		}
		if *wait == 0 {
			fmt.Fprintf(env.stdout, "failover to %s requested\n", *to)
			return nil
		}
		return waitLeader(ctx, env, from, *wait, now)
	}
}

func ctlSetPause(fs *flag.FlagSet, pause bool) ctlAction {
	force := fs.Bool("force", false, "do not ask for confirmation")
	return func(ctx context.Context, env ctlEnv) error {
		question := "Pause the cluster (no automatic failover until resume)?"
		if !pause {
			question = "Resume automatic failover?"
		}
		if err := env.confirm(*force, question); err != nil {
			return err
		}
		cctx, cancel := env.call(ctx)
		defer cancel()
		if _, err := clusterstate.EditConfig(cctx, env.cli, env.keys, []string{fmt.Sprintf("pause=%v", pause)}); err != nil {
			return err
		}
		if pause {
			fmt.Fprintln(env.stdout, "paused: the agents keep publishing but neither promote nor demote")
		} else {
			fmt.Fprintln(env.stdout, "resumed")
		}
		return nil
	}
}

const ctlDefaultTimeout = 5 * time.Second

// ctlFlags registers the flags every verb accepts, before or after the
// verb's name.
func ctlFlags(fs *flag.FlagSet, configPath *string) *overrides[ctlSettings] {
	o := &overrides[ctlSettings]{fs: fs}
	// Not StringVar: registering the flag again after the verb must not
	// reset a path given before it.
	fs.Func("config", "YAML config file; only its etcd keys and cluster are read, so a daemon's file will do (flags override it)", func(v string) error {
		*configPath = v
		return nil
	})
	bindEtcdFlags(o, func(s *ctlSettings) *EtcdSettings { return &s.EtcdSettings })
	bind(o, "cluster", "cluster name in etcd, /pharos/<cluster>/ (default: env PHAROS_CLUSTER)", parseString, func(s *ctlSettings) *string { return &s.Cluster })
	bind(o, "timeout", "bound on the etcd calls of one command (default 5s)", func(v string) (time.Duration, error) {
		d, err := time.ParseDuration(v)
		if err == nil && d <= 0 {
			err = errors.New("must be positive")
		}
		return d, err
	}, func(s *ctlSettings) *time.Duration { return &s.Timeout })
	return o
}

func ctlUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "usage: pharos ctl [--config FILE] --etcd EP --cluster NAME <verb> [verb flags]\n(--etcd and --cluster default to env PHAROS_ETCD and PHAROS_CLUSTER)\n\nverbs:")
	for _, v := range ctlVerbs() {
		fmt.Fprintf(w, "  %-8s %s\n", v.name, v.summary)
	}
	fmt.Fprintln(w, "\nflags (before or after the verb):")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func runCtl(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var configPath string
	fs := flag.NewFlagSet("pharos ctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	common := ctlFlags(fs, &configPath)
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "pharos ctl: "+format+"\n", a...)
		return code
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			ctlUsage(stderr, fs)
			return exitOK
		}
		return fail(exitUsage, "%v", err)
	}
	if fs.NArg() == 0 {
		ctlUsage(stderr, fs)
		return exitUsage
	}
	name := fs.Arg(0)
	var verb *ctlVerb
	for _, v := range ctlVerbs() {
		if v.name == name {
			verb = &v
			break
		}
	}
	if verb == nil {
		fmt.Fprintf(stderr, "pharos ctl: unknown verb %q\n", name)
		ctlUsage(stderr, fs)
		return exitUsage
	}

	vfs := flag.NewFlagSet("pharos ctl "+name, flag.ContinueOnError)
	vfs.SetOutput(io.Discard)
	action := verb.flags(vfs)
	after := ctlFlags(vfs, &configPath)
	// Positional arguments (edit-config's key=value) may come before
	// flags: parse around them.
	var positional []string
	rest := fs.Args()[1:]
	var perr error
	for {
		if perr = vfs.Parse(rest); perr != nil || vfs.NArg() == 0 || !verb.takesArgs {
			break
		}
		positional = append(positional, vfs.Arg(0))
		rest = vfs.Args()[1:]
	}
	if err := perr; err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "usage: pharos ctl [flags] %s [flags]\n", name)
			vfs.SetOutput(stderr)
			vfs.PrintDefaults()
			return exitOK
		}
		return fail(exitUsage, "%s: %v", name, err)
	}
	if vfs.NArg() > 0 {
		return fail(exitUsage, "%s: unexpected argument %q", name, vfs.Arg(0))
	}

	// The demo's demo.env sets PHAROS_ETCD and PHAROS_CLUSTER; the file
	// and the flags override them.
	settings := ctlSettings{Cluster: os.Getenv("PHAROS_CLUSTER"), Timeout: ctlDefaultTimeout}
	settings.Etcd, _ = parseList(os.Getenv("PHAROS_ETCD"))
	if configPath != "" {
		if err := loadEtcdKeys(configPath, &settings); err != nil {
			return fail(exitUsage, "%v", err)
		}
	}
	common.apply(&settings)
	after.apply(&settings)
	if settings.Cluster == "" {
		return fail(exitUsage, "cluster: missing (--cluster or cluster in the config file)")
	}
	keys, err := cluster.NewKeys(settings.Cluster)
	if err != nil {
		return fail(exitUsage, "cluster: %v", err)
	}
	if len(settings.Etcd) == 0 {
		return fail(exitUsage, "etcd: missing (--etcd or etcd in the config file)")
	}
	ecfg, err := settings.etcdConfig()
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	ecfg.DialTimeout = settings.Timeout
	cli, err := etcdclient.New(ecfg)
	if err != nil {
		return fail(exitUsage, "etcd: %v", err)
	}
	defer cli.Close()

	env := ctlEnv{cli: cli, keys: keys, stdin: os.Stdin, stdout: stdout, stderr: stderr,
		interactive: isTerminal(os.Stdin), timeout: settings.Timeout, args: positional}
	if err := action(ctx, env); err != nil {
		var ue *usageError
		switch {
		case errors.As(err, &ue):
			return fail(exitUsage, "%s: %v", name, err)
		case errors.Is(err, clusterstate.ErrRefused), errors.Is(err, errCancelled):
			return fail(exitFailure, "%s: %v", name, err)
		}
		eps := strings.Join(settings.Etcd, ",")
		if unreachable(err) && ctx.Err() == nil {
			return fail(exitFailure, "etcd %s unreachable: no answer within %v (%v)", eps, settings.Timeout, err)
		}
		return fail(exitFailure, "etcd %s: %v", eps, err)
	}
	return exitOK
}

// isTerminal reports whether f is a terminal (/dev/null is a character
// device too, hence the termios check).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// unreachable reports whether err means etcd did not answer (as opposed
// to answering with an error).
func unreachable(err error) bool {
	return errors.Is(err, context.DeadlineExceeded)
}

// loadEtcdKeys reads the keys of ctlSettings from a config file and skips
// the others: ctl is pointed at a daemon's file (proxy or agent), whose
// other keys are not its business. A bad value of a key it reads is still
// a usage error naming the key.
func loadEtcdKeys(path string, s *ctlSettings) error { return decodeYAML(path, s, true) }
