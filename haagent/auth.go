package haagent

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// DefaultRequireAuth is the require_auth of the agent's connections: a
// server must prove it knows the password's verifier (SCRAM) before it
// gets anything; one that asks for the password itself (cleartext, md5)
// gets nothing.
const DefaultRequireAuth = "scram-sha-256"

// CheckRequireAuth reports whether v is a require_auth list libpq and pgx
// accept (e.g. "scram-sha-256,md5" for a cluster with md5 accounts); ""
// stands for DefaultRequireAuth.
func CheckRequireAuth(v string) error {
	if v == "" {
		return nil
	}
	if _, err := pgconn.ParseConfig("require_auth=" + pgproc.QuoteConninfo(v)); err != nil {
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) && pe.Unwrap() != nil {
			err = pe.Unwrap()
		}
		return fmt.Errorf("require_auth %q: %w", v, err)
	}
	return nil
}

// SCRAM-SHA-256 as PostgreSQL stores it (RFC 5802, RFC 7677; PostgreSQL's
// scram_build_secret): 4096 iterations and a 16-byte salt, its defaults.
const (
	scramIterations = 4096
	scramSaltLen    = 16
)

// scramVerifier computes the secret PostgreSQL keeps for password,
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, so that a role's
// password is set from it and the password itself never reaches the
// server, where log_statement, an error message or pg_stat_statements
// could record it.
//
// PostgreSQL applies SASLprep to the password first; for an ASCII one that
// is the identity (its pg_saslprep returns ASCII input unchanged), and the
// agent refuses others rather than carry Unicode 3.2's normalization
// tables.
func scramVerifier(password string, salt []byte, iterations int) (string, error) {
	if password == "" {
		return "", errors.New("empty password")
	}
	for i := 0; i < len(password); i++ {
		if password[i] >= 0x80 {
			return "", errors.New("password is not ASCII: PostgreSQL would normalize it (SASLprep) before hashing, which the agent does not reproduce")
		}
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", err
	}
	mac := func(msg string) []byte {
		h := hmac.New(sha256.New, salted)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac("Client Key"))
	b64 := base64.StdEncoding.EncodeToString
	return "SCRAM-SHA-256$" + strconv.Itoa(iterations) + ":" + b64(salt) + "$" + b64(stored[:]) + ":" + b64(mac("Server Key")), nil
}

// newSCRAMVerifier is scramVerifier with a fresh random salt.
func newSCRAMVerifier(password string) (string, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	return scramVerifier(password, salt, scramIterations)
}

// CheckRolePassword reports whether the agent can set a role's password
// from password (see scramVerifier), for the settings to refuse at start
// what bootstrap would fail on.
func CheckRolePassword(password string) error {
	_, err := scramVerifier(password, make([]byte, scramSaltLen), 1)
	return err
}

// writeFileAtomic replaces path with content, mode 0600, owned by owner:
// written to a fresh temporary file beside it (created exclusively, so
// nothing planted there is followed) and renamed over it. Neither the mode
// of a file already at path nor a symlink there (rename replaces the link,
// never its target) decides who can read the content or where it lands,
// and a reader never sees half of it.
func writeFileAtomic(path string, content []byte, owner pgproc.Owner) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone after a successful rename
	_, werr := f.Write(content)
	if err := errors.Join(werr, f.Close()); err != nil {
		return err
	}
	if err := owner.Chown(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// passfileLine is libpq's passfile entry giving the replication password
// to up's host and port, for replication connections only (the walreceiver
// and pg_basebackup look it up with the database "replication"), so that
// libpq hands it to no other server.
func (p *postgres) passfileLine(up cluster.Member) string {
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`)
	return esc.Replace(up.Host) + ":" + strconv.Itoa(up.Port) + ":replication:" +
		esc.Replace(p.cfg.ReplicationUser) + ":" + esc.Replace(p.cfg.ReplicationPassword) + "\n"
}

// writePassfile points the passfile at up (see passfileLine).
func (p *postgres) writePassfile(up cluster.Member) error {
	return writeFileAtomic(p.passfile(), []byte(p.passfileLine(up)), p.cfg.Owner)
}

// removePassfile takes the replication password off the disk while this
// server follows nobody.
func (p *postgres) removePassfile() error {
	if err := os.Remove(p.passfile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// toolEnv is the environment of the libpq programs that log in to another
// server (pg_basebackup, pg_rewind): require_auth as the agent's own
// connections have it. A libpq before 16 ignores the variable; see
// probeRequireAuth.
func (p *postgres) toolEnv(more ...string) []string {
	return append([]string{"PGREQUIREAUTH=" + p.cfg.RequireAuth}, more...)
}

// probeRequireAuth asks pg_isready whether the libpq of the server's
// programs (the walreceiver's, pg_basebackup's, pg_rewind's) knows
// require_auth, new in PostgreSQL 16: an unknown connection option makes
// pg_isready exit 3 before it tries anything, a known one lets it try the
// socket directory below, which cannot exist, and exit 2.
func (p *postgres) probeRequireAuth() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.command(ctx, nil, "pg_isready", "-q", "-d", "require_auth=scram-sha-256 host=/dev/null/pharos-probe port=1").Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return true
	}
	p.log.Warn("libpq has no require_auth (it came with PostgreSQL 16): the walreceiver, pg_basebackup and pg_rewind "+
		"cannot refuse a server that asks for the password itself; the agent's own connections refuse it, and "+
		"check every clone and rewind source before those programs run", "pg_isready", err)
	return false
}

// checkReplicationLogin logs in to up as pg_basebackup is about to (a
// physical replication connection as the replication user) under the
// agent's require_auth, and logs out. A libpq before 16 would hand the
// password to a server that asks for it; such a server fails this login
// first, as does one that cannot prove it knows the password's verifier
// (SCRAM authenticates the server too). A server that cannot be reached at
// all is left to pg_basebackup, whose error says more.
func (p *postgres) checkReplicationLogin(ctx context.Context, up cluster.Member) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cc, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=replication replication=true application_name=pharos-clone-check connect_timeout=5",
		pgproc.QuoteConninfo(up.Host), pgproc.QuoteConninfo(strconv.Itoa(up.Port)), pgproc.QuoteConninfo(p.cfg.ReplicationUser)))
	if err != nil {
		return err
	}
	cc.Password = p.cfg.ReplicationPassword
	cc.RequireAuth = p.cfg.RequireAuth
	conn, err := pgconn.ConnectConfig(ctx, cc)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil
		}
		return err
	}
	return conn.Close(context.WithoutCancel(ctx))
}
