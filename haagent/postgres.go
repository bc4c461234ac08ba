package haagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

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
	// ProxyAuthUser and ProxyAuthPassword: the login bootstrap creates for
	// the proxies' auth_user, the only role granted EXECUTE on the
	// pharos.get_auth function it creates with it (see AuthFunctionSQL);
	// neither without a password.
	ProxyAuthUser, ProxyAuthPassword string
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

// Bounds of a copy (pg_basebackup, pg_rewind). Its size is unknown in
// advance, so the bound that matters is on silence: with --progress both
// print a line at least every second while data moves, and only their
// last step (the sync to disk) is quiet for long. The total bound only
// keeps a copy from running forever.
const (
	copyStallTimeout = 10 * time.Minute
	copyTimeout      = 48 * time.Hour
)

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
