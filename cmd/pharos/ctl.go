package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.yaml.in/yaml/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/ctl"
	"github.com/pharos-ha/pharos/internal/router"
)

// ctlSettings are ctl's config keys and flags: how to reach etcd and which
// cluster. Their defaults come from the environment (PHAROS_ETCD,
// PHAROS_CLUSTER), as the demo's demo.env sets them. The keys are those of the daemons' config files, so that
// `pharos ctl --config /etc/pharos/agent.yaml` works on a node.
type ctlSettings struct {
	Etcd             []string `yaml:"etcd"`
	Cluster          string   `yaml:"cluster"`
	EtcdUsername     string   `yaml:"etcd_username"`
	EtcdPassword     string   `yaml:"etcd_password"`
	EtcdPasswordFile string   `yaml:"etcd_password_file"`
	EtcdCACert       string   `yaml:"etcd_cacert"`
	EtcdCert         string   `yaml:"etcd_cert"`
	EtcdKey          string   `yaml:"etcd_key"`

	// Timeout bounds each verb's etcd calls (flag only).
	Timeout time.Duration `yaml:"-"`
}

func (s *ctlSettings) etcdFields() etcdFields {
	return etcdFields{
		Endpoints: &s.Etcd, Username: &s.EtcdUsername, Password: &s.EtcdPassword, PasswordFile: &s.EtcdPasswordFile,
		CACert: &s.EtcdCACert, Cert: &s.EtcdCert, Key: &s.EtcdKey,
	}
}

// ctlAction runs a verb once its flags are parsed.
type ctlAction func(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, stdout io.Writer) error

type ctlVerb struct {
	name    string
	summary string
	// flags registers the verb's own flags and returns the action that
	// reads them.
	flags func(fs *flag.FlagSet) ctlAction
}

func ctlVerbs() []ctlVerb {
	return []ctlVerb{
		{"list", "members with role, state, timeline, lag and the leader", func(fs *flag.FlagSet) ctlAction {
			asJSON := fs.Bool("json", false, "print JSON instead of a table")
			return func(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, stdout io.Writer) error {
				st, err := ctl.Status(ctx, cli, keys)
				if err != nil {
					return err
				}
				if *asJSON {
					return ctl.WriteJSON(stdout, st)
				}
				return ctl.WriteTable(stdout, st)
			}
		}},
		{"history", "timeline switches, oldest first", func(fs *flag.FlagSet) ctlAction {
			asJSON := fs.Bool("json", false, "print JSON instead of a table")
			return func(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, stdout io.Writer) error {
				h, err := ctl.History(ctx, cli, keys)
				if err != nil {
					return err
				}
				if *asJSON {
					return ctl.WriteHistoryJSON(stdout, h)
				}
				return ctl.WriteHistoryTable(stdout, h)
			}
		}},
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
	bindEtcdFlags(o, (*ctlSettings).etcdFields)
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
	if err := vfs.Parse(fs.Args()[1:]); err != nil {
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
	ecfg, err := settings.etcdFields().config()
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	ecfg.DialTimeout = settings.Timeout
	cli, err := router.NewEtcdClient(ecfg)
	if err != nil {
		return fail(exitUsage, "etcd: %v", err)
	}
	defer cli.Close()

	actx, cancel := context.WithTimeout(ctx, settings.Timeout)
	defer cancel()
	if err := action(actx, cli, keys, stdout); err != nil {
		eps := strings.Join(settings.Etcd, ",")
		if unreachable(err) && ctx.Err() == nil {
			return fail(exitFailure, "etcd %s unreachable: no answer within %v (%v)", eps, settings.Timeout, err)
		}
		return fail(exitFailure, "etcd %s: %v", eps, err)
	}
	return exitOK
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
func loadEtcdKeys(path string, s *ctlSettings) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return usageErrorf("config: %v", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return usageErrorf("config %s: %s", path, oneLine(err))
	}
	if len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return usageErrorf("config %s: line %d: expected key: value settings", path, root.Line)
	}
	fields := yamlFields(s)
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, value := root.Content[i], root.Content[i+1]
		field, ok := fields[key.Value]
		if !ok {
			continue
		}
		if err := value.Decode(field.Addr().Interface()); err != nil {
			return usageErrorf("config %s: %s (line %d): %s", path, key.Value, key.Line, oneLine(err))
		}
	}
	return nil
}
