package pglocal

import (
	"fmt"
	"maps"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// HostileServer is a fake PostgreSQL server on loopback that answers every
// startup with a request for the password itself (cleartext or md5) — what
// a host that took over a member's address would do to harvest it — and
// records what the client sent back. A client that honours require_auth
// hangs up instead of answering.
type HostileServer struct {
	// Static after construction.
	Addr string // 127.0.0.1:port
	ln   net.Listener
	md5  bool

	mu        sync.Mutex // guards the fields below
	startups  []map[string]string
	passwords []string

	wg sync.WaitGroup
}

// NewHostileServer listens on a free loopback port; method is "password"
// (AuthenticationCleartextPassword) or "md5" (AuthenticationMD5Password).
func NewHostileServer(method string) (*HostileServer, error) {
	if method != "password" && method != "md5" {
		return nil, fmt.Errorf("hostile server: method %q: password or md5", method)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &HostileServer{Addr: ln.Addr().String(), ln: ln, md5: method == "md5"}
	s.wg.Go(s.accept)
	return s, nil
}

// Port is the port it listens on.
func (s *HostileServer) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Startups returns the startup parameters of every session a client began.
func (s *HostileServer) Startups() []map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]string(nil), s.startups...)
}

// Passwords returns every PasswordMessage received, in order: the
// cleartext password, or libpq's "md5…" digest.
func (s *HostileServer) Passwords() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.passwords...)
}

// Close stops listening and waits for the sessions to end.
func (s *HostileServer) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

func (s *HostileServer) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Go(func() { s.serve(c) })
	}
}

// serve handles one connection: refuses SSL and GSS encryption (so the
// client goes on in plaintext), asks for the password, records the answer
// and fails the login, as a real server with a wrong password would.
func (s *HostileServer) serve(c net.Conn) {
	defer c.Close()
	// Bounded: a client that neither answers nor hangs up cannot hold Close.
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	be := pgproto3.NewBackend(c, c)
	if !s.startup(c, be) {
		return
	}
	authType := uint32(pgproto3.AuthTypeCleartextPassword)
	if s.md5 {
		authType = pgproto3.AuthTypeMD5Password
		be.Send(&pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}})
	} else {
		be.Send(&pgproto3.AuthenticationCleartextPassword{})
	}
	if err := be.Flush(); err != nil {
		return
	}
	if err := be.SetAuthType(authType); err != nil {
		return
	}
	msg, err := be.Receive()
	if err != nil {
		return // the client hung up: what require_auth makes it do
	}
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		return
	}
	s.mu.Lock()
	s.passwords = append(s.passwords, pw.Password)
	s.mu.Unlock()
	be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"})
	_ = be.Flush()
}

// startup reads up to the StartupMessage, refusing encryption, and
// records its parameters; false when the client went away or sent
// something else (a CancelRequest).
func (s *HostileServer) startup(c net.Conn, be *pgproto3.Backend) bool {
	for {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return false
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
			if _, err := c.Write([]byte("N")); err != nil {
				return false
			}
		case *pgproto3.StartupMessage:
			s.mu.Lock()
			s.startups = append(s.startups, maps.Clone(m.Parameters))
			s.mu.Unlock()
			return true
		default:
			return false
		}
	}
}
