package pglocal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/pgproc"
)

// Roles and database every cluster has. The superuser and app_trust log in
// without a password over TCP; the others need theirs (see pg_hba.conf in
// hbaConf).
const (
	SuperUser       = "pharos"        // superuser, trust on 127.0.0.1
	ReplicationUser = "replicator"    // REPLICATION LOGIN, trust for replication
	UserTrust       = "app_trust"     // trust
	UserMD5         = "app_md5"       // md5 auth, password stored as md5
	UserSCRAM       = "app_scram"     // scram-sha-256; owns AppDB
	UserHealth      = "pharos_health" // scram-sha-256, member of pg_monitor
	AppDB           = "app"

	PasswordMD5    = "md5-secret"
	PasswordSCRAM  = "scram-secret"
	PasswordHealth = "health-secret"
)

// hbaConf replaces the pg_hba.conf initdb writes: loopback only. The host
// lines match SSL and non-SSL connections alike.
const hbaConf = `# written by pharos pglocal
local all all trust
host replication replicator 127.0.0.1/32 trust
host all app_trust 127.0.0.1/32 trust
host all app_md5 127.0.0.1/32 md5
host all pharos 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
`

// Options configure NewCluster. The zero value gives a primary without
// replicas, durable settings, no SSL.
type Options struct {
	// BaseDir is the directory the cluster lives in. Empty: a fresh
	// directory under os.TempDir(), removed by Close. Given: created if
	// needed and used as is; Close leaves it (it is the caller's). When
	// the caller is root, the postgres user must be able to reach it, so
	// not under t.TempDir().
	BaseDir string
	// BinDir holds the PostgreSQL programs; empty: see pgproc.FindBinDir.
	BinDir string
	// Replicas is the number of streaming replicas cloned from the primary.
	Replicas int
	// Logger receives lifecycle events; nil discards them.
	Logger *slog.Logger
	// ExtraConf lines are appended to postgresql.conf after ours, so they
	// override them (e.g. "synchronous_commit = on").
	ExtraConf []string
	// SSL generates a self-signed certificate for 127.0.0.1/localhost
	// (CertPEM) and sets ssl=on. Clients choose with sslmode.
	SSL bool
	// Fast trades durability for test speed: fsync=off,
	// synchronous_commit=off, full_page_writes=off, initdb and
	// pg_basebackup --no-sync. Not for tests that count acknowledged
	// writes across crashes: synchronous_commit=off acknowledges commits
	// before their WAL is written, and a killed server loses them (it also
	// disables waiting for synchronous standbys).
	Fast bool
}

// Cluster is a primary and its streaming replicas on loopback, all started
// by this process. Its methods are safe for concurrent use.
type Cluster struct {
	// Static after construction.
	opts    Options
	log     *slog.Logger
	binDir  string
	owner   pgproc.Owner
	base    string
	ownBase bool // base was created by NewCluster; Close removes it
	cert    []byte

	mu        sync.Mutex
	instances []*Instance // guarded by mu; [0] is the primary
	closed    bool        // guarded by mu
}

// NewCluster initialises and starts a primary, creates the roles and the
// database, and clones opts.Replicas streaming replicas. On error it cleans
// up what it started.
func NewCluster(ctx context.Context, opts Options) (_ *Cluster, err error) {
	c := &Cluster{opts: opts, log: opts.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if opts.Replicas < 0 {
		return nil, fmt.Errorf("pglocal: Replicas is %d", opts.Replicas)
	}
	if c.binDir, err = pgproc.FindBinDir(ctx, opts.BinDir); err != nil {
		return nil, err
	}
	if c.owner, err = pgproc.CurrentOwner(); err != nil {
		return nil, err
	}
	if err := c.makeBase(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			_ = c.Close(cctx)
		}
	}()
	if opts.SSL {
		var key []byte
		if c.cert, key, err = SelfSignedCert(); err != nil {
			return nil, err
		}
		defer clear(key)
		if err := c.initPrimary(ctx, key); err != nil {
			return nil, err
		}
	} else if err := c.initPrimary(ctx, nil); err != nil {
		return nil, err
	}
	for range opts.Replicas {
		if _, err := c.AddReplica(ctx); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) makeBase() error {
	if c.opts.BaseDir == "" {
		dir, err := os.MkdirTemp("", "pglocal-")
		if err != nil {
			return fmt.Errorf("base dir: %w", err)
		}
		c.base, c.ownBase = dir, true
		if err := c.owner.Chown(dir); err != nil {
			os.RemoveAll(dir)
			return err
		}
	} else {
		dir, err := filepath.Abs(c.opts.BaseDir)
		if err != nil {
			return fmt.Errorf("base dir: %w", err)
		}
		if err := c.owner.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("base dir: %w", err)
		}
		c.base = dir
		if err := c.owner.Chown(dir); err != nil {
			return err
		}
	}
	if err := c.owner.CheckReachable(c.base); err != nil {
		if c.ownBase {
			os.RemoveAll(c.base)
		}
		return err
	}
	// The socket path is <base>/<name>.s/.s.PGSQL.<port>; sun_path holds 107
	// bytes plus a NUL.
	if n := len(c.base) + len("/pg99.s/.s.PGSQL.65535"); n > 107 {
		if c.ownBase {
			os.RemoveAll(c.base)
		}
		return fmt.Errorf("base dir %s too long for unix socket paths (%d > 107 bytes)", c.base, n)
	}
	return nil
}

// newInstance reserves a name, a port and the paths of the next instance.
func (c *Cluster) newInstance() (*Instance, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("pglocal: cluster closed")
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	name := "pg" + strconv.Itoa(len(c.instances))
	in := &Instance{
		Name:    name,
		DataDir: filepath.Join(c.base, name),
		Port:    port,
		sockDir: filepath.Join(c.base, name+".s"),
		logPath: filepath.Join(c.base, name+".log"),
		binDir:  c.binDir,
		workDir: c.base,
		owner:   c.owner,
		log:     c.log,
	}
	c.instances = append(c.instances, in)
	return in, nil
}

func (c *Cluster) initPrimary(ctx context.Context, key []byte) error {
	in, err := c.newInstance()
	if err != nil {
		return err
	}
	args := []string{"-D", in.DataDir, "-U", SuperUser, "--auth=trust", "--data-checksums",
		"--no-locale", "--encoding=UTF8", "--no-instructions"}
	if c.opts.Fast {
		args = append(args, "--no-sync")
	}
	t0 := time.Now()
	if err := runCommand(ctx, c.owner, c.base, c.binDir, "initdb", args...); err != nil {
		return fmt.Errorf("init %s: %w", in.Name, err)
	}
	c.log.Info("initdb done", "instance", in.Name, "dir", in.DataDir, "took", time.Since(t0))
	if err := c.writeConfig(in, key); err != nil {
		return fmt.Errorf("init %s: %w", in.Name, err)
	}
	if err := c.startFresh(ctx, in); err != nil {
		return err
	}
	if err := c.createRoles(ctx, in); err != nil {
		return fmt.Errorf("init %s: %w", in.Name, err)
	}
	return nil
}

func (c *Cluster) writeConfig(in *Instance, key []byte) error {
	conf := []string{
		"",
		"# --- added by pharos pglocal; port, listen_addresses,",
		"# unix_socket_directories and cluster_name are on the command line",
		"wal_level = replica",
		"max_wal_senders = 10",
		"max_replication_slots = 10",
		"hot_standby = on",
		"wal_keep_size = '128MB'",
		"max_connections = 200",
		"shared_buffers = '32MB'",
		"logging_collector = off",
		"log_destination = 'stderr'",
		"log_line_prefix = '%m [%p] %q%u@%d '",
	}
	if c.opts.Fast {
		conf = append(conf, "fsync = off", "synchronous_commit = off", "full_page_writes = off")
	}
	if c.opts.SSL {
		conf = append(conf, "ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'")
		if err := writeOwnedFile(c.owner, in.DataDir, "server.crt", c.cert, 0o600); err != nil {
			return err
		}
		if err := writeOwnedFile(c.owner, in.DataDir, "server.key", key, 0o600); err != nil {
			return err
		}
	}
	if len(c.opts.ExtraConf) > 0 {
		conf = append(conf, "# Options.ExtraConf")
		conf = append(conf, c.opts.ExtraConf...)
	}
	path := filepath.Join(in.DataDir, "postgresql.conf")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	_, werr := f.WriteString(strings.Join(conf, "\n") + "\n")
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	return writeOwnedFile(c.owner, in.DataDir, "pg_hba.conf", []byte(hbaConf), 0o600)
}

// startFresh creates the socket directory and starts a new instance,
// moving it to another free port when its port was taken in the meantime.
func (c *Cluster) startFresh(ctx context.Context, in *Instance) error {
	if err := os.Mkdir(in.sockDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("socket dir: %w", err)
	}
	if err := c.owner.Chown(in.sockDir); err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		err := in.Start(ctx)
		if err == nil {
			return nil
		}
		if attempt == 3 || !strings.Contains(err.Error(), "Address already in use") {
			return err
		}
		port, perr := FreePort()
		if perr != nil {
			return errors.Join(err, perr)
		}
		c.log.Info("port taken, retrying", "instance", in.Name, "port", in.Port, "new_port", port)
		in.Port = port // not yet visible to callers
	}
}

func (c *Cluster) createRoles(ctx context.Context, in *Instance) error {
	conn, err := in.superConn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// One statement per Exec: CREATE DATABASE refuses to run in the
	// implicit transaction of a multi-statement query.
	stmts := []string{
		pgproc.CreateRoleSQL(ReplicationUser, "REPLICATION LOGIN", "", ""),
		pgproc.CreateRoleSQL(UserTrust, "LOGIN", "", ""),
		"SET password_encryption = 'md5'",
		pgproc.CreateRoleSQL(UserMD5, "LOGIN", PasswordMD5, ""),
		"SET password_encryption = 'scram-sha-256'",
		pgproc.CreateRoleSQL(UserSCRAM, "LOGIN", PasswordSCRAM, ""),
		pgproc.CreateRoleSQL(UserHealth, "LOGIN", PasswordHealth, "pg_monitor"),
		"CREATE DATABASE " + AppDB + " OWNER " + UserSCRAM,
		"GRANT ALL ON DATABASE " + AppDB + " TO " + UserTrust + ", " + UserMD5,
	}
	if err := execAll(ctx, conn, stmts); err != nil {
		return err
	}
	appConn, err := in.Connect(ctx, SuperUser, "", AppDB)
	if err != nil {
		return err
	}
	defer appConn.Close(context.WithoutCancel(ctx))
	return execAll(ctx, appConn, []string{
		"GRANT CREATE, USAGE ON SCHEMA public TO " + UserTrust + ", " + UserMD5 + ", " + UserSCRAM,
	})
}

func execAll(ctx context.Context, conn *pgx.Conn, stmts []string) error {
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%.40s: %w", s, err)
		}
	}
	return nil
}

// Primary returns the instance initdb created. It stays the same after a
// promotion of a replica; callers that promote track roles themselves.
func (c *Cluster) Primary() *Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.instances) == 0 {
		return nil
	}
	return c.instances[0]
}

// Replicas returns the replicas cloned by NewCluster and AddReplica.
func (c *Cluster) Replicas() []*Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.instances) < 2 {
		return nil
	}
	return append([]*Instance(nil), c.instances[1:]...)
}

// Instances returns the primary followed by the replicas.
func (c *Cluster) Instances() []*Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Instance(nil), c.instances...)
}

// BaseDir returns the directory holding the data directories, sockets and
// logs.
func (c *Cluster) BaseDir() string { return c.base }

// BinDir returns the directory of the PostgreSQL programs (pgbench, psql…
// when installed).
func (c *Cluster) BinDir() string { return c.binDir }

// Owner returns the OS account the servers run as.
func (c *Cluster) Owner() pgproc.Owner { return c.owner }

// CertPEM returns the servers' self-signed certificate (its own CA), or nil
// without Options.SSL.
func (c *Cluster) CertPEM() []byte { return c.cert }

// Close stops every instance (replicas first, so the primary's shutdown
// does not wait for them) and removes the base directory when NewCluster
// created it, unless PHAROS_KEEP_PGDATA=1. It is safe to call twice.
func (c *Cluster) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	instances := append([]*Instance(nil), c.instances...)
	c.mu.Unlock()

	var errs []error
	var wg sync.WaitGroup
	replicaErrs := make([]error, len(instances))
	for i := len(instances) - 1; i >= 1; i-- {
		wg.Go(func() { replicaErrs[i] = instances[i].Stop(ctx) })
	}
	wg.Wait()
	errs = append(errs, replicaErrs...)
	if len(instances) > 0 {
		errs = append(errs, instances[0].Stop(ctx))
	}
	if c.ownBase && c.base != "" {
		if os.Getenv(KeepDataEnv) == "1" {
			c.log.Info("keeping base dir", "dir", c.base)
		} else if err := os.RemoveAll(c.base); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", c.base, err))
		}
	}
	return errors.Join(errs...)
}
