package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/wire"
)

// passwordCred is what an auth_file gives a certificate user (auth_type
// cert) for logging in to the servers: a password, which answers SCRAM and
// md5, or an md5 hash, which answers md5 only. It is shared by the user's
// sessions.
type passwordCred struct {
	// Static after loading.
	password string // "" when the file gave an md5 hash
	md5      string // hex, without "md5": from the file, or of password and the user

	mu sync.Mutex
	// Guarded by mu: the keys last derived from password, for the salt and
	// iterations they carry (the cluster's, since the verifier
	// replicates), so that PBKDF2 runs once per password, not per login.
	keys *pgauth.Keys
}

// scramKeys returns the SCRAM keys of the password for a server's salt
// and iteration count. Logins of the user wait for one derivation.
func (p *passwordCred) scramKeys(salt []byte, iterations int) (pgauth.Keys, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if k := p.keys; k != nil && k.Iterations == iterations && bytes.Equal(k.Salt, salt) {
		return *k, nil
	}
	k, err := pgauth.NewSCRAMKeys(p.password, salt, iterations)
	if err != nil {
		return pgauth.Keys{}, err
	}
	p.keys = &k
	return k, nil
}

// loadCertAuthFile reads the auth_file of auth_type cert: per user, the
// password (plaintext, as PgBouncer's userlist allows) or md5 verifier the
// proxy logs in to the servers with. A SCRAM verifier cannot log in
// anywhere and is refused, naming the user.
func loadCertAuthFile(path string) (map[string]*passwordCred, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	entries, err := pgauth.ReadUserlist(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	users := make(map[string]*passwordCred, len(entries))
	for _, e := range entries {
		v, verr := pgauth.ParseVerifier(e.Secret)
		switch {
		case verr == nil && v.Kind == pgauth.KindMD5:
			users[e.User] = &passwordCred{md5: v.MD5}
		case verr == nil:
			return nil, fmt.Errorf("%s: line %d: user %q: a %s verifier cannot log in to the servers; with auth_type cert the file gives the user's password (or its md5 hash, for servers that ask md5)", path, e.Line, e.User, v.Kind)
		case e.Secret == "":
			return nil, fmt.Errorf("%s: line %d: user %q: empty password", path, e.Line, e.User)
		default:
			if err := pgauth.CheckSCRAMPassword(e.Secret); err != nil {
				return nil, fmt.Errorf("%s: line %d: user %q: %w", path, e.Line, e.User, err)
			}
			users[e.User] = &passwordCred{password: e.Secret, md5: pgauth.MD5Hash(e.User, e.Secret)}
		}
	}
	return users, nil
}

// certFile is auth_type cert's auth_file, read at start and again by
// reload (RELOAD, SIGHUP).
type certFile struct {
	path  string
	users atomic.Pointer[map[string]*passwordCred]
}

func newCertFile(path string) (*certFile, error) {
	f := &certFile{path: path}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// reload reads the file again; one that does not load leaves the users
// read before in place. A user whose line is unchanged keeps its
// credential, and with it the SCRAM keys already derived.
func (f *certFile) reload() error {
	users, err := loadCertAuthFile(f.path)
	if err != nil {
		return fmt.Errorf("auth_file: %w", err)
	}
	if old := f.users.Load(); old != nil {
		for u, c := range users {
			if o := (*old)[u]; o != nil && o.password == c.password && o.md5 == c.md5 {
				users[u] = o
			}
		}
	}
	f.users.Store(&users)
	return nil
}

// lookup returns user's credential, nil when the file has none.
func (f *certFile) lookup(user string) *passwordCred {
	if f == nil {
		return nil
	}
	return (*f.users.Load())[user]
}

// authenticateCert authenticates the client by its TLS certificate, as
// PostgreSQL's cert method: verified against client_tls_ca_file during
// the handshake, its common name must be the startup packet's user. The
// session then holds the auth_file's credentials for the user, if any.
func (sess *session) authenticateCert(user string) (metrics.Outcome, error) {
	tc, ok := sess.client.(*tls.Conn)
	if !ok || len(tc.ConnectionState().VerifiedChains) == 0 {
		return metrics.OutcomeAuthFailed, &startupError{code: wire.CodeInvalidAuthSpec, message: "connection requires a valid client certificate"}
	}
	cn := tc.ConnectionState().VerifiedChains[0][0].Subject.CommonName
	if cn == "" || cn != user {
		sess.srv.log.Info("certificate authentication failed: the certificate's common name is not the user", "user", user, "cn", cn, "remote", sess.client.RemoteAddr())
		return metrics.OutcomeAuthFailed, &startupError{code: wire.CodeInvalidAuthSpec, message: fmt.Sprintf("certificate authentication failed for user %q", user)}
	}
	c := &backendCreds{}
	if pw := sess.srv.certUsers.lookup(user); pw != nil {
		c.md5, c.pw = pw.md5, pw
	}
	sess.creds = c
	return "", nil
}
