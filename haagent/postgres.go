package haagent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// PostgresConfig describes the local server the agent manages.
type PostgresConfig struct {
	Name    string // member name: cluster_name and the replication slot
	DataDir string
	BinDir  string
	// SocketDir holds the Unix socket the agent connects through; default
	// the data directory's parent.
	SocketDir string
	// Listen is listen_addresses; Port the server port.
	Listen string
	Port   int
	// Superuser and Replication are the accounts bootstrap creates and the
	// agent uses; passwords are never logged nor written to a file other
	// than through initdb's --pwfile, which is removed at once, and the
	// walreceiver's passfile. Roles other than the superuser get theirs as
	// a SCRAM verifier computed here, never as the password.
	SuperUser, SuperPassword             string
	ReplicationUser, ReplicationPassword string
	// MonitorUser and MonitorPassword: the login bootstrap creates for the
	// proxies' health checks, a plain member of pg_monitor; none without a
	// password.
	MonitorUser, MonitorPassword string
	// RequireAuth is libpq's require_auth for every connection the agent
	// makes and the PostgreSQL programs it runs make: the authentication
	// methods a server may ask for before it gets anything. Empty:
	// DefaultRequireAuth.
	RequireAuth string
	// HBA lines replace the pg_hba.conf initdb writes; empty: loopback
	// only, scram-sha-256 everywhere.
	HBA []string
	// Parameters are extra postgresql.conf settings.
	Parameters map[string]string
	// Owner is the OS account the server runs as (the postgres user when
	// the agent runs as root).
	Owner pgproc.Owner
	// CloneMaxRate is pg_basebackup's --max-rate (e.g. "100M"), so that a
	// clone does not saturate the primary's disk or network; empty: no
	// limit.
	CloneMaxRate string
}

// postgres runs and inspects the local server. Its methods are called from
// the agent loop only.
type postgres struct {
	cfg     PostgresConfig
	log     *slog.Logger
	logPath string
	// dynamic are the cluster-wide parameters from the config key, set by
	// the loop before each round.
	dynamic map[string]string
	// syncNames is what synchronous_standby_names names on a primary.
	syncNames []string
	// deadWait bounds how long awaitDead waits for a server's processes
	// to go.
	deadWait time.Duration
	// libpqRequireAuth: whether the libpq of the server's programs knows
	// require_auth (probeRequireAuth, asked once).
	libpqRequireAuth func() bool
}

func newPostgres(cfg PostgresConfig, log *slog.Logger) *postgres {
	if cfg.SocketDir == "" {
		cfg.SocketDir = filepath.Dir(cfg.DataDir)
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1"
	}
	if cfg.RequireAuth == "" {
		cfg.RequireAuth = DefaultRequireAuth
	}
	p := &postgres{cfg: cfg, log: log, logPath: filepath.Join(filepath.Dir(cfg.DataDir), cfg.Name+"-postgres.log"),
		deadWait: 10 * time.Second}
	p.libpqRequireAuth = sync.OnceValue(p.probeRequireAuth)
	return p
}

// confFile is ours, included from postgresql.conf; rewritten before every
// start because pg_basebackup and pg_rewind copy the source's.
const confFile = "pharos.conf"

func (p *postgres) path(name string) string { return filepath.Join(p.cfg.DataDir, name) }

func (p *postgres) dataPresent() bool {
	_, err := os.Stat(p.path("PG_VERSION"))
	return err == nil
}

// lockedPid is the PID postmaster.pid names, 0 when there is none.
func (p *postgres) lockedPid() int {
	pid, _ := pgproc.PidFile(p.cfg.DataDir)
	return pid
}

// postmasterPid returns the PID in postmaster.pid when it is a live server
// of this data directory (or a live process /proc cannot describe: never
// take a running server for a dead one). A zombie or a process that reused
// the PID is no server.
func (p *postgres) postmasterPid() int {
	pid := p.lockedPid()
	if pid == 0 {
		return 0
	}
	switch pgproc.HolderOf(pid, p.cfg.DataDir) {
	case pgproc.HolderServer, pgproc.HolderUnknown:
		return pid
	}
	return 0
}

// errServerAlive: a process of the data directory's server still runs, so
// nothing may touch the directory without it yet. A later round retries.
var errServerAlive = errors.New("server still running")

// awaitDead returns once no process of this data directory's server is
// alive, before anything works on the directory without the server
// (pg_rewind, pg_ctl start, a wipe). A live postmaster is waited for,
// never killed: whoever stops it decides how. Backends that outlive their
// postmaster hold its shared memory and are killed. Lock files naming a
// dead or foreign process are then removed: PostgreSQL's own check
// (kill(pid, 0)) takes a zombie that init has not reaped yet, or a PID
// reused by another program, for a live postmaster and refuses to run,
// which made a rewind fail right after a watchdog killed the server.
// It waits at most bound, then fails with errServerAlive.
func (p *postgres) awaitDead(ctx context.Context, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	waiting := false
	for {
		pid, holder := p.lockedPid(), pgproc.HolderGone
		if pid != 0 {
			holder = pgproc.HolderOf(pid, p.cfg.DataDir)
		}
		postmaster := holder == pgproc.HolderServer || holder == pgproc.HolderUnknown
		var left []int
		if postmaster {
			left = pgproc.ServerProcesses(p.cfg.DataDir)
		} else {
			left = pgproc.KillServer(p.cfg.DataDir, 0)
		}
		if !postmaster && len(left) == 0 {
			if pid != 0 {
				p.log.Info("removing the lock file of a server that is gone", "pid", pid, "process", holder.String())
			}
			break
		}
		if time.Now().After(deadline) {
			if postmaster {
				return fmt.Errorf("%w: postmaster %d still alive after %v", errServerAlive, pid, bound)
			}
			return fmt.Errorf("%w: processes %v of a dead postmaster do not go away after %v", errServerAlive, left, bound)
		}
		if !waiting {
			waiting = true
			p.log.Info("waiting for the server's processes to exit", "postmaster", pid, "postmaster_alive", postmaster,
				"processes", left, "up_to", bound)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errServerAlive, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	sock := filepath.Join(p.cfg.SocketDir, fmt.Sprintf(".s.PGSQL.%d", p.cfg.Port))
	for _, stale := range []string{p.path("postmaster.pid"), sock + ".lock", sock} {
		if err := os.Remove(stale); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale lock file: %w", err)
		}
	}
	return nil
}

func (p *postgres) connString(db string) string {
	return fmt.Sprintf("host=%s port=%s user=%s dbname=%s connect_timeout=2 application_name=pharos-agent",
		pgproc.QuoteConninfo(p.cfg.SocketDir), pgproc.QuoteConninfo(strconv.Itoa(p.cfg.Port)), pgproc.QuoteConninfo(p.cfg.SuperUser), pgproc.QuoteConninfo(db))
}

// memberConnString is the superuser's conninfo for another member (also
// pg_rewind's --source-server); the password goes separately.
func (p *postgres) memberConnString(m cluster.Member) string {
	return fmt.Sprintf("host=%s port=%s user=%s dbname=postgres connect_timeout=3", pgproc.QuoteConninfo(m.Host), pgproc.QuoteConninfo(strconv.Itoa(m.Port)), pgproc.QuoteConninfo(p.cfg.SuperUser))
}

// connect opens a superuser connection to the local server (m nil, over
// the Unix socket) or to member m.
func (p *postgres) connect(ctx context.Context, m *cluster.Member) (*pgx.Conn, error) {
	dsn := p.connString("postgres")
	if m != nil {
		dsn = p.memberConnString(*m)
	}
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cc.Password = p.cfg.SuperPassword
	// Set after parsing, so that no PGREQUIREAUTH in the environment
	// widens it.
	cc.RequireAuth = p.cfg.RequireAuth
	return pgx.ConnectConfig(ctx, cc)
}

// exec runs one statement on the local server (m nil) or member m, within
// timeout.
func (p *postgres) exec(ctx context.Context, m *cluster.Member, timeout time.Duration, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := p.connect(ctx, m)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// observe fills a PGView. A server that runs but does not answer counts as
// running (its state unknown) so that nothing starts a second postmaster.
func (p *postgres) observe(ctx context.Context) core.PGView {
	v := core.PGView{}
	if !p.dataPresent() {
		return v
	}
	v.Data = core.DataPresent
	_, err := os.Stat(p.path("standby.signal"))
	v.Standby = err == nil
	v.Upstream = p.configuredUpstream()
	if p.postmasterPid() != 0 {
		v.Running = true
		if err := p.query(ctx, &v); err != nil {
			p.log.Debug("query local server", "err", err)
			v.InRecovery = v.Standby // best guess until it answers
		}
		return v
	}
	if cd, err := p.controlData(ctx); err == nil {
		v.SystemID = cd["Database system identifier"]
		v.Timeline, _ = strconv.ParseInt(cd["Latest checkpoint's TimeLineID"], 10, 64)
		v.LSN, _ = cluster.ParseLSN(cd["Latest checkpoint location"])
		if min, err := cluster.ParseLSN(cd["Minimum recovery ending location"]); err == nil {
			v.ReceiveLSN = min
		}
	} else {
		p.log.Warn("pg_controldata", "err", err)
	}
	return v
}

func (p *postgres) query(ctx context.Context, v *core.PGView) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := p.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var sysid string
	var lsn, recv *string
	var tl *int64
	var syncNames string
	// On a primary the timeline comes from the current WAL file name:
	// pg_control_checkpoint() lags behind a promotion until the next
	// checkpoint. On a standby: the walreceiver's, else the last
	// restartpoint's.
	err = conn.QueryRow(ctx, `
SELECT (SELECT system_identifier::text FROM pg_control_system()),
       pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END,
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()::text END,
       CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT received_tli::bigint FROM pg_stat_get_wal_receiver() WHERE received_tli > 0),
                          (SELECT timeline_id::bigint FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,
       EXISTS (SELECT FROM pg_settings WHERE pending_restart),
       current_setting('synchronous_standby_names'),
       EXISTS (SELECT FROM pg_stat_get_wal_receiver() WHERE status = 'streaming')`).
		Scan(&sysid, &v.InRecovery, &lsn, &recv, &tl, &v.PendingRestart, &syncNames, &v.Streaming)
	if err != nil {
		return err
	}
	v.SystemID = sysid
	if !v.InRecovery {
		v.SyncNames = parseSyncNames(syncNames)
	}
	if tl != nil {
		v.Timeline = *tl
	}
	if lsn != nil {
		v.LSN, _ = cluster.ParseLSN(*lsn)
	}
	if recv != nil {
		v.ReceiveLSN, _ = cluster.ParseLSN(*recv)
	}
	return nil
}

// controlData runs pg_controldata and returns its "key: value" lines.
func (p *postgres) controlData(ctx context.Context) (map[string]string, error) {
	out, err := p.run(ctx, 10*time.Second, nil, "pg_controldata", "-D", p.cfg.DataDir)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

// run runs a PostgreSQL program as the owner, bounded by timeout and ctx;
// env adds variables (passwords go there, never on the command line).
func (p *postgres) run(ctx context.Context, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := p.command(ctx, env, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", name, err, lastLines(string(out), 5))
	}
	return string(out), nil
}

// command prepares a PostgreSQL program to run as the owner beside the
// data directory, killed when ctx ends; env adds variables.
func (p *postgres) command(ctx context.Context, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(p.cfg.BinDir, name), args...)
	cmd.Dir = filepath.Dir(p.cfg.DataDir)
	cmd.Env = append(pgproc.ChildEnv(), env...)
	p.cfg.Owner.Apply(cmd)
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Bounds of a copy (pg_basebackup, pg_rewind). Its size is unknown in
// advance, so the bound that matters is on silence: with --progress both
// print a line at least every second while data moves, and only their
// last step (the sync to disk) is quiet for long. The total bound only
// keeps a copy from running forever.
const (
	copyStallTimeout = 10 * time.Minute
	copyTimeout      = 48 * time.Hour
)

// errStalled is the cause of a copy killed after printing nothing for
// copyStallTimeout.
var errStalled = errors.New("no output")

// runLines runs a program like run, but hands each line of its output to
// onLine as it comes (from exec's output goroutine; run returns after the
// last call). Lines for which onLine returns false, the ones that are not
// progress reports, are kept: the error names the last of them, and they
// are returned. The program is killed once it has printed nothing for
// stall.
func (p *postgres) runLines(ctx context.Context, timeout, stall time.Duration, env []string, onLine func(string) bool, name string, args ...string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctx, stalled := context.WithCancelCause(ctx)
	defer stalled(nil)
	quiet := time.AfterFunc(stall, func() { stalled(fmt.Errorf("%w for %s", errStalled, stall)) })
	defer quiet.Stop()
	cmd := p.command(ctx, env, name, args...)
	// Enough for the whole of an error (libpq's come with a hint line, a
	// pg_rewind's with the server's log lines) without keeping a long
	// run's every line.
	kept := tailLines{max: 20}
	w := &lineWriter{fn: func(l string) {
		quiet.Reset(stall)
		if !onLine(l) {
			kept.add(l)
		}
	}}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	w.flush()
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errStalled) {
			err = fmt.Errorf("%w (killed: %w)", err, cause)
		}
		return kept.lines, fmt.Errorf("%s: %w: %s", name, err, kept.String())
	}
	return kept.lines, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// initdb creates the data directory with checksums (pg_rewind needs them or
// wal_log_hints) and the superuser; the password reaches initdb through a
// file that exists only while it runs.
func (p *postgres) initdb(ctx context.Context) error {
	if err := p.cfg.Owner.MkdirAll(p.cfg.DataDir, 0o700); err != nil {
		return err
	}
	pw, err := os.CreateTemp(filepath.Dir(p.cfg.DataDir), ".pwfile-*")
	if err != nil {
		return fmt.Errorf("initdb: password file: %w", err)
	}
	defer os.Remove(pw.Name())
	_, werr := pw.WriteString(p.cfg.SuperPassword + "\n")
	if err := errors.Join(werr, pw.Close(), p.cfg.Owner.Chown(pw.Name())); err != nil {
		return fmt.Errorf("initdb: password file: %w", err)
	}
	args := []string{"-D", p.cfg.DataDir, "-U", p.cfg.SuperUser, "--pwfile", pw.Name(),
		"--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
		"--data-checksums", "--encoding=UTF8", "--no-locale", "--no-instructions"}
	if _, err := p.run(ctx, 2*time.Minute, nil, "initdb", args...); err != nil {
		return err
	}
	conf, err := os.OpenFile(p.path("postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, werr = conf.WriteString("\n# pharos: its settings, rewritten before every start\ninclude_if_exists = '" + confFile + "'\n")
	return errors.Join(werr, conf.Close())
}

// writeConf writes pharos.conf, pg_hba.conf and standby.signal (or removes
// it) for the next start. upstream nil: a standby with no upstream.
func (p *postgres) writeConf(standby bool, upstream *cluster.Member) error {
	params := map[string]string{
		"listen_addresses":             p.cfg.Listen,
		"port":                         strconv.Itoa(p.cfg.Port),
		"unix_socket_directories":      p.cfg.SocketDir,
		"cluster_name":                 p.cfg.Name,
		"wal_level":                    "replica",
		"hot_standby":                  "on",
		"hot_standby_feedback":         "on",
		"max_wal_senders":              "10",
		"max_replication_slots":        "10",
		"wal_keep_size":                "256MB",
		"wal_log_hints":                "on",
		"wal_retrieve_retry_interval":  "500ms",
		"wal_receiver_status_interval": "1s",
		"recovery_target_timeline":     "latest",
		"logging_collector":            "off",
		"log_line_prefix":              "%m [%p] %q%u@%d ",
		"password_encryption":          "scram-sha-256",
	}
	// Precedence: the agent's own settings < the cluster's dynamic ones <
	// this node's local ones; protected ones are the agent's only. Names
	// are folded as PostgreSQL folds them, so that a layer overrides
	// another whatever the spelling. The dynamic layer is whatever a writer
	// of the config key put there: a name or value that would not be one
	// line of pharos.conf is skipped, not written.
	for _, layer := range []map[string]string{p.dynamic, p.cfg.Parameters} {
		for k, v := range layer {
			if err := cluster.CheckParameter(k, v); err != nil {
				p.log.Warn("parameter ignored", "err", err)
				continue
			}
			if cluster.ProtectedParameter(k) {
				p.log.Warn("parameter ignored: the agent sets it", "parameter", k)
				continue
			}
			params[strings.ToLower(k)] = v
		}
	}
	// A standby ignores it; a standby about to be promoted in synchronous
	// mode needs it in place before the promotion.
	params["synchronous_standby_names"] = formatSyncNames(p.syncNames)
	if standby && upstream != nil {
		params["primary_conninfo"] = p.primaryConninfo(*upstream)
		params["primary_slot_name"] = core.SlotName(p.cfg.Name)
		// Before the configuration that makes the walreceiver look
		// the password up for this upstream.
		if err := p.writePassfile(*upstream); err != nil {
			return fmt.Errorf("passfile: %w", err)
		}
	} else {
		params["primary_conninfo"] = ""
		params["primary_slot_name"] = ""
		if err := p.removePassfile(); err != nil {
			return fmt.Errorf("passfile: %w", err)
		}
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# written by the pharos agent; edits are lost\n")
	if upstream != nil && standby {
		fmt.Fprintf(&b, "# upstream: %s\n", upstream.Name)
	}
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConfValue(params[k]))
	}
	if err := p.writeOwned(confFile, b.String()); err != nil {
		return err
	}
	if err := p.writeOwned("pg_hba.conf", p.hba()); err != nil {
		return err
	}
	if standby {
		return p.writeOwned("standby.signal", "")
	}
	if err := os.Remove(p.path("standby.signal")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// quoteConfValue quotes a postgresql.conf value. Inside quotes the file's
// parser reads backslash escapes as C does (GUC_scanstr), so a backslash is
// doubled as well as a quote: unescaped, C:\x would lose its backslash
// and a value ending in one would swallow the closing quote (the server
// would not start).
func quoteConfValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(v) + "'"
}

// The password is passed through the environment of the walreceiver, not
// written here: primary_conninfo lands in a file the whole cluster copies.
// libpq reads it from a passfile the agent writes beside the data dir.
func (p *postgres) primaryConninfo(up cluster.Member) string {
	ci := fmt.Sprintf("host=%s port=%s user=%s application_name=%s passfile=%s connect_timeout=2",
		pgproc.QuoteConninfo(up.Host), pgproc.QuoteConninfo(strconv.Itoa(up.Port)), pgproc.QuoteConninfo(p.cfg.ReplicationUser), pgproc.QuoteConninfo(p.cfg.Name), pgproc.QuoteConninfo(p.passfile()))
	// A libpq that does not know the option refuses the whole string.
	if p.libpqRequireAuth() {
		ci += " require_auth=" + pgproc.QuoteConninfo(p.cfg.RequireAuth)
	}
	return ci
}

func (p *postgres) passfile() string {
	return filepath.Join(filepath.Dir(p.cfg.DataDir), ".pharos-pgpass")
}

func (p *postgres) hba() string {
	lines := p.cfg.HBA
	if len(lines) == 0 {
		lines = []string{
			"local all all scram-sha-256",
			"host replication " + p.cfg.ReplicationUser + " 127.0.0.0/8 scram-sha-256",
			"host all all 127.0.0.0/8 scram-sha-256",
		}
	}
	return "# written by the pharos agent\n" + strings.Join(lines, "\n") + "\n"
}

func (p *postgres) writeOwned(name, content string) error {
	return writeFileAtomic(p.path(name), []byte(content), p.cfg.Owner)
}

// formatSyncNames writes synchronous_standby_names: FIRST k (names),
// with application_name = member name.
func formatSyncNames(names []string) string {
	if len(names) == 0 {
		return ""
	}
	if len(names) == 1 && names[0] == "*" {
		return "FIRST 1 (*)"
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = `"` + n + `"`
	}
	return fmt.Sprintf("FIRST %d (%s)", len(names), strings.Join(quoted, ", "))
}

// parseSyncNames reads back what formatSyncNames wrote (and Patroni-like
// plain lists): the names, or ["*"].
func parseSyncNames(v string) []string {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil
	}
	if i, j := strings.IndexByte(v, '('), strings.LastIndexByte(v, ')'); i >= 0 && j > i {
		v = v[i+1 : j]
	}
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.Trim(strings.TrimSpace(f), `"`); f != "" {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// syncStates returns sync_state by application_name from
// pg_stat_replication.
func (p *postgres) syncStates(ctx context.Context) (map[string]string, error) {
	conn, err := p.connect(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, "SELECT application_name, sync_state FROM pg_stat_replication")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for rows.Next() {
		var name, state string
		if err := rows.Scan(&name, &state); err != nil {
			return nil, err
		}
		out[name] = state
	}
	return out, rows.Err()
}

// configuredUpstream reads which member pharos.conf follows, matched by
// the comment writeConf leaves; "" when none.
func (p *postgres) configuredUpstream() string {
	b, err := os.ReadFile(p.path(confFile))
	if err != nil {
		return ""
	}
	if m := upstreamRe.FindSubmatch(b); m != nil {
		return string(m[1])
	}
	return ""
}

var upstreamRe = regexp.MustCompile(`(?m)^# upstream: (\S+)$`)

// start starts the server with pg_ctl and waits until it accepts
// connections, once nothing of an earlier server lives (awaitDead).
func (p *postgres) start(ctx context.Context, timeout time.Duration) error {
	if p.postmasterPid() != 0 {
		return nil
	}
	if err := p.awaitDead(ctx, p.deadWait); err != nil {
		return err
	}
	secs := max(int(timeout/time.Second), 1)
	_, err := p.run(ctx, timeout+5*time.Second, nil, "pg_ctl", "start", "-D", p.cfg.DataDir, "-l", p.logPath,
		"-w", "-t", strconv.Itoa(secs), "-s")
	if err != nil {
		logTail, _ := pgproc.Tail(p.logPath, 600)
		return fmt.Errorf("%w (log %s: %s)", err, p.logPath, logTail)
	}
	return nil
}

// stop shuts the server down: fast (sessions cut, shutdown checkpoint,
// standbys sent all WAL), escalated to SIGKILL of every server process
// when it takes longer than grace. It returns once no process is left.
func (p *postgres) stop(ctx context.Context, grace time.Duration) error {
	// Bounded by awaitDead, also when ctx ended: a stop that was asked for
	// finishes.
	done := context.WithoutCancel(ctx)
	pid := p.postmasterPid()
	if pid == 0 {
		return p.awaitDead(done, p.deadWait)
	}
	_ = syscall.Kill(pid, syscall.SIGINT)
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for pgproc.ProcessAlive(pid) {
		select {
		case <-tick.C:
			continue
		case <-deadline.C:
		case <-ctx.Done():
		}
		p.log.Warn("fast shutdown too slow: killing the server", "grace", grace)
		pgproc.KillServer(p.cfg.DataDir, pid)
		break
	}
	return p.awaitDead(done, p.deadWait)
}

func (p *postgres) promote(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := p.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 25)").Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return errors.New("pg_promote returned false")
	}
	return nil
}

// shutdownCheckpoint reads where the WAL of a cleanly stopped server ends:
// its last checkpoint, the shutdown checkpoint.
func (p *postgres) shutdownCheckpoint(ctx context.Context) (cluster.LSN, error) {
	cd, err := p.controlData(ctx)
	if err != nil {
		return 0, err
	}
	if st := cd["Database cluster state"]; st != "shut down" {
		return 0, fmt.Errorf("server not shut down cleanly (%q)", st)
	}
	return cluster.ParseLSN(cd["Latest checkpoint location"])
}

// waitReceived waits until member's walreceiver has received WAL past lsn
// (the shutdown checkpoint record starts at lsn).
func (p *postgres) waitReceived(ctx context.Context, m cluster.Member, lsn cluster.LSN, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := p.connect(ctx, &m)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var recv *string
		if err := conn.QueryRow(ctx, "SELECT pg_last_wal_receive_lsn()::text").Scan(&recv); err != nil {
			return err
		}
		if recv != nil {
			if got, err := cluster.ParseLSN(*recv); err == nil && got > lsn {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("received up to %v, need past %s", deref(recv), lsn)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return "nothing"
	}
	return *s
}

// checkpoint runs CHECKPOINT on the local server (m nil) or member m.
func (p *postgres) checkpoint(ctx context.Context, m *cluster.Member) error {
	return p.exec(ctx, m, 5*time.Minute, "CHECKPOINT")
}

// reload applies a changed pharos.conf (primary_conninfo and
// primary_slot_name are reloadable since PostgreSQL 13).
func (p *postgres) reload(ctx context.Context) error {
	return p.exec(ctx, nil, 5*time.Second, "SELECT pg_reload_conf()")
}

// switchPoint reads the newest timeline history file for where timeline
// tl−1 ended.
func (p *postgres) switchPoint(tl int64) (cluster.LSN, error) {
	b, err := os.ReadFile(p.path(fmt.Sprintf("pg_wal/%08X.history", tl)))
	if err != nil {
		return 0, err
	}
	var last cluster.LSN
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			if t, err := strconv.ParseInt(f[0], 10, 64); err == nil && t == tl-1 {
				if l, err := cluster.ParseLSN(f[1]); err == nil {
					last, found = l, true
				}
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("timeline %d history has no line for timeline %d", tl, tl-1)
	}
	return last, nil
}

// syncSlots makes the physical slots match want: creates the missing ones
// and drops those of members in drop (inactive only).
func (p *postgres) syncSlots(ctx context.Context, want, drop []string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := p.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical'")
	if err != nil {
		return err
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, m := range want {
		s := core.SlotName(m)
		if slices.Contains(have, s) {
			continue
		}
		if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", s); err != nil {
			return fmt.Errorf("create slot %s: %w", s, err)
		}
		p.log.Info("replication slot created", "slot", s)
	}
	for _, m := range drop {
		s := core.SlotName(m)
		if !slices.Contains(have, s) {
			continue
		}
		tag, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", s)
		if err != nil {
			return fmt.Errorf("drop slot %s: %w", s, err)
		}
		if tag.RowsAffected() > 0 {
			p.log.Info("replication slot dropped: member left the cluster", "slot", s)
		}
	}
	return nil
}

// createRoles makes the replication account and, when it has a password,
// the health checks' (the superuser exists since initdb). Each password is
// set from its SCRAM verifier: what the server, its log and any error
// message see is the verifier, never the password.
func (p *postgres) createRoles(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	type role struct{ name, password, attrs, inRole string }
	roles := []role{{p.cfg.ReplicationUser, p.cfg.ReplicationPassword, "REPLICATION LOGIN", ""}}
	if p.cfg.MonitorUser != "" && p.cfg.MonitorPassword != "" {
		roles = append(roles, role{p.cfg.MonitorUser, p.cfg.MonitorPassword, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION", "pg_monitor"})
	} else {
		p.log.Info("no monitor_password: no login created for the proxies' health checks", "monitor_user", p.cfg.MonitorUser)
	}
	stmts := make([]string, len(roles))
	for i, r := range roles {
		v, err := newSCRAMVerifier(r.password)
		if err != nil {
			return fmt.Errorf("role %s: %w", r.name, err)
		}
		stmts[i] = pgproc.CreateRoleSQL(r.name, r.attrs, v, r.inRole)
	}
	conn, err := p.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for i, stmt := range stmts {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("create role %s: %w", roles[i].name, err)
		}
	}
	return nil
}

// checkSource makes sure up answers as a primary before anything here is
// wiped for a clone from it.
func (p *postgres) checkSource(ctx context.Context, up cluster.Member) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := p.connect(ctx, &up)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", core.ErrSourceUnavailable, up.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return fmt.Errorf("%w: %s: %w", core.ErrSourceUnavailable, up.Name, err)
	}
	if rec {
		return fmt.Errorf("%w: %s is in recovery", core.ErrSourceUnavailable, up.Name)
	}
	return nil
}

// basebackup clones the data directory from up (which must be empty),
// handing each line pg_basebackup prints to onLine (see runLines): its
// progress reports and, with --verbose, the steps that have none (the
// source's checkpoint, the end of the WAL stream, the sync to disk).
func (p *postgres) basebackup(ctx context.Context, up cluster.Member, onLine func(string) bool) error {
	if err := p.cfg.Owner.MkdirAll(p.cfg.DataDir, 0o700); err != nil {
		return err
	}
	args := []string{"-D", p.cfg.DataDir, "-h", up.Host, "-p", strconv.Itoa(up.Port),
		"-U", p.cfg.ReplicationUser, "-X", "stream", "-c", "fast", "--no-password", "--progress", "--verbose"}
	if p.cfg.CloneMaxRate != "" {
		args = append(args, "--max-rate", p.cfg.CloneMaxRate)
	}
	if err := p.checkReplicationLogin(ctx, up); err != nil {
		return fmt.Errorf("%s refused as a clone source: %w", up.Name, err)
	}
	// The password from the passfile, which names up: not in the
	// environment, where it would go to whichever server libpq reaches.
	if err := p.writePassfile(up); err != nil {
		return fmt.Errorf("passfile: %w", err)
	}
	_, err := p.runLines(ctx, copyTimeout, copyStallTimeout, p.toolEnv("PGPASSFILE="+p.passfile(), "PGAPPNAME=pharos-clone"),
		onLine, "pg_basebackup", args...)
	return err
}

// rewindRun is what a pg_rewind run left to classify its failure by.
type rewindRun struct {
	// lines are its messages (progress reports left out), newest last.
	lines []string
	// copied: it passed its point of no return and began to change the
	// target.
	copied bool
	// killed: it was stopped from outside (context ended, stalled).
	killed bool
}

// rewind runs pg_rewind against up, handing each line it prints to onLine
// (see runLines), once no process of this server is left (awaitDead).
// PostgreSQL 13+ runs crash recovery on a target that was not shut down
// cleanly first.
func (p *postgres) rewind(ctx context.Context, up cluster.Member, onLine func(string) bool) (rewindRun, error) {
	var run rewindRun
	if err := p.awaitDead(ctx, p.deadWait); err != nil {
		return run, err
	}
	src := p.memberConnString(up)
	// pg_rewind reads the source's timeline from its control file, which
	// a just-promoted server updates only at its next checkpoint; without
	// one it answers "no rewind required" for a diverged target.
	if err := p.checkpoint(ctx, &up); err != nil {
		return run, fmt.Errorf("%w: checkpoint on %s before rewind: %w", core.ErrSourceUnavailable, up.Name, err)
	}
	// A target that was not shut down cleanly is recovered by pg_rewind in
	// single-user mode, which refuses standby mode: the standby.signal
	// goes now; starting as a standby writes it again.
	if err := os.Remove(p.path("standby.signal")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return run, err
	}
	watch := func(l string) bool {
		if strings.Contains(l, core.RewindCopyMarker) {
			run.copied = true
		}
		return onLine(l)
	}
	lines, err := p.runLines(ctx, copyTimeout, copyStallTimeout, p.toolEnv("PGPASSWORD="+p.cfg.SuperPassword),
		watch, "pg_rewind", "-D", p.cfg.DataDir, "--source-server", src, "--progress")
	run.lines = lines
	run.killed = err != nil && (ctx.Err() != nil || errors.Is(err, errStalled))
	return run, err
}

// wipe removes the data directory's content (for a fresh clone).
func (p *postgres) wipe() error {
	if err := os.RemoveAll(p.cfg.DataDir); err != nil {
		return err
	}
	return p.cfg.Owner.MkdirAll(p.cfg.DataDir, 0o700)
}
