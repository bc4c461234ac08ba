package proxy

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/internal/consolecmd"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/wire"
)

// The admin console: a client that asks for the virtual database
// AdminDatabase, on either listener, as one of Config.AdminUsers, is
// authenticated by the proxy as any client is and then talks to the proxy
// itself instead of a backend. It speaks the simple query protocol with
// PgBouncer's console commands (internal/consolecmd parses them, adminshow.go
// renders SHOW, adminstats.go keeps SHOW STATS' counts).

// AdminDatabase is the admin console's virtual database.
const AdminDatabase = consolecmd.AdminDatabase

// SQLSTATEs of console errors beyond the parser's.
const (
	codeConfigFile             = "F0000"
	codeInsufficientPrivilege  = "42501"
	codeNotInPrerequisiteState = "55000"
	codeNotSupported           = consolecmd.CodeNotSupported
	codeQueryCanceled          = "57014"
)

// pausedWhat names what a PAUSE of db pauses.
func pausedWhat(db string) string {
	if db == "" {
		return "every database"
	}
	return fmt.Sprintf("database %q", db)
}

// maxConsoleMessage bounds a message from a console client.
const maxConsoleMessage = 64 << 10

// consolePoll is how often a waiting PAUSE, and a session waiting for a
// paused database, look again.
const consolePoll = 50 * time.Millisecond

// clientInfo is what the startup packet said about a session; set once,
// before anything reads it.
type clientInfo struct {
	user, database, appName string
	console                 bool
}

// startupInfo reads the startup packet. consoleOn says whether the
// database AdminDatabase means the console: only when the proxy
// authenticates clients itself, so that in passthrough a database of that
// name is the cluster's, as it was before the console existed.
func startupInfo(pkt wire.StartupPacket, consoleOn bool) *clientInfo {
	user, _ := pkt.Param("user")
	db, _ := pkt.Param("database")
	if db == "" {
		// As PostgreSQL: the database defaults to the user's name.
		db = user
	}
	app, _ := pkt.Param("application_name")
	return &clientInfo{user: user, database: db, appName: app, console: consoleOn && db == AdminDatabase}
}

// adminState is what PAUSE, KILL and RESUME change.
type adminState struct {
	mu sync.Mutex
	// Guarded by mu.
	all     bool            // PAUSE without a database
	paused  map[string]bool // by database
	resumed chan struct{}   // closed, and replaced, by every RESUME
}

func (a *adminState) init() {
	a.paused = make(map[string]bool)
	a.resumed = make(chan struct{})
}

// pausedFor reports whether db is paused, and the channel the next RESUME
// closes.
func (a *adminState) pausedFor(db string) (bool, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.all || a.paused[db], a.resumed
}

func (a *adminState) pause(db string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if db == "" {
		a.all = true
	} else {
		a.paused[db] = true
	}
}

// resume ends a pause; "" ends every pause.
func (a *adminState) resume(db string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case db == "" && !a.all && len(a.paused) == 0:
		return &consoleError{Code: codeNotInPrerequisiteState, Message: "pharos console: nothing is paused"}
	case db == "":
		a.all = false
		clear(a.paused)
	case a.all:
		return &consoleError{Code: codeNotInPrerequisiteState, Message: fmt.Sprintf(
			"pharos console: the proxy is paused as a whole (PAUSE without a database), so database %q stays paused; RESUME without a database resumes everything", db)}
	case !a.paused[db]:
		return &consoleError{Code: codeNotInPrerequisiteState, Message: fmt.Sprintf("pharos console: database %q is not paused", db)}
	default:
		delete(a.paused, db)
	}
	close(a.resumed)
	a.resumed = make(chan struct{})
	return nil
}

// pausedList returns the paused databases ("*" for all), for SHOW STATE.
func (a *adminState) pausedList() (all bool, dbs []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for db := range a.paused {
		dbs = append(dbs, db)
	}
	slices.Sort(dbs)
	return a.all, dbs
}

// waitResumed holds a new session for a paused database until RESUME, the
// session's end, or its startup deadline (startup_timeout from accept: the
// client is still logging in, it has not had its AuthenticationOk).
func (sess *session) waitResumed(db string, deadline time.Time) (metrics.Outcome, error) {
	return sess.waitResumedFor(db, deadline, "startup_timeout")
}

// waitResumedFor is waitResumed with the deadline named by bound.
func (sess *session) waitResumedFor(db string, deadline time.Time, bound string) (metrics.Outcome, error) {
	s := sess.srv
	paused, resumed := s.admin.pausedFor(db)
	if !paused {
		return "", nil
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	tick := time.NewTicker(consolePoll)
	defer tick.Stop()
	for paused {
		select {
		case <-resumed:
		case <-tick.C:
			if sess.ended.Load() != nil {
				return metrics.OutcomeShuttingDown, fmt.Errorf("while its database was paused: %w", errSessionEnded)
			}
			continue
		case <-timer.C:
			return metrics.OutcomeTimeout, &startupError{code: wire.CodeCannotConnectNow, message: fmt.Sprintf(
				"pharos: database %q is paused (PAUSE on the admin console) and was not resumed within %s", db, bound)}
		}
		paused, resumed = s.admin.pausedFor(db)
	}
	return "", nil
}

// consoleError is an error the console answers with; the session goes on.
type consoleError = consolecmd.Error

// consoleMsg is one message from a console client, or the error that ended
// its stream.
type consoleMsg struct {
	typ  byte
	body []byte
	err  error
}

// console runs an admin console session from its StartupMessage to its
// end. The proxy authenticates the client; the session then counts as an
// authenticated client of its endpoint like any other.
func (sess *session) console(deadline time.Time) {
	s := sess.srv
	info := sess.info.Load()
	if outcome, err := sess.authenticateClient(info.user, deadline); err != nil {
		sess.failStartup(outcome, err)
		return
	}
	sess.creds = nil // the console logs in nowhere
	if !slices.Contains(s.cfg.AdminUsers, info.user) {
		s.metrics.Sessions.WithLabelValues(sess.ep.String(), string(metrics.OutcomeAuthFailed)).Inc()
		_ = sess.client.SetWriteDeadline(time.Now().Add(fatalWriteGrace))
		_ = sess.writeClient(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: codeInsufficientPrivilege,
			Message: fmt.Sprintf("permission denied for database %q", AdminDatabase),
			Detail:  fmt.Sprintf("User %q is not one of the proxy's admin_users.", info.user)})
		s.log.Info("admin console refused: not an admin user", "user", info.user, "remote", sess.client.RemoteAddr())
		return
	}
	if !sess.authenticated() {
		sess.refuse(metrics.OutcomeTooManyClients, wire.CodeTooManyConnections, "sorry, too many clients already")
		return
	}
	var out []byte
	out = appendMsg(out, &pgproto3.AuthenticationOk{})
	for _, p := range [][2]string{
		{"server_version", s.cfg.Version + " (pharos)"},
		{"server_encoding", "UTF8"}, {"client_encoding", "UTF8"},
		{"DateStyle", "ISO"}, {"TimeZone", "UTC"}, {"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"}, {"application_name", info.appName},
	} {
		out = appendMsg(out, &pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	// A CancelRequest with the console's key stops a waiting PAUSE (psql's
	// Ctrl-C).
	ck := &sess.cancelKey
	ck.target.interrupt = make(chan struct{}, 1)
	ck.ownPID, ck.ownSecret = s.issueCancelKey(&ck.target)
	out = wire.AppendBackendKeyData(out, ck.ownPID, ck.ownSecret[:])
	out = appendMsg(out, &pgproto3.ReadyForQuery{TxStatus: wire.TxIdle})
	sess.countOutcome(metrics.OutcomeOK)
	sess.setAnswered(0, true)
	sess.connMu.Lock()
	if sess.ended.Load() == nil {
		_ = sess.client.SetDeadline(time.Time{})
	}
	sess.connMu.Unlock()
	sess.attached.Store(true)
	if s.drainFlag.Load() {
		sess.drainIfIdle()
	}
	s.log.Info("admin console opened", "user", info.user, "endpoint", sess.ep, "remote", sess.client.RemoteAddr())
	if _, err := sess.client.Write(out); err != nil {
		return
	}

	msgs := make(chan consoleMsg)
	stop := make(chan struct{})
	var reader sync.WaitGroup
	reader.Go(func() { sess.readConsole(msgs, stop) })
	defer func() {
		close(stop)
		sess.end("", "", "")
		reader.Wait()
	}()
	c := &consoleConn{sess: sess, msgs: msgs, interrupt: ck.target.interrupt}
	c.serve()
	if st := sess.ended.Load(); st != nil && st.message != "" {
		_ = sess.client.SetWriteDeadline(time.Now().Add(fatalWriteGrace))
		_, _ = sess.client.Write(wire.FatalError(st.code, st.message))
	}
}

// readConsole is the console session's only reader of the client: it
// passes each message on until the stream fails or stop closes.
func (sess *session) readConsole(msgs chan<- consoleMsg, stop <-chan struct{}) {
	for {
		typ, msg, err := wire.ReadMessage(sess.client, nil, maxConsoleMessage)
		m := consoleMsg{typ: typ, err: err}
		if err == nil {
			m.body = msg[wire.HeaderLen:]
		}
		select {
		case msgs <- m:
		case <-stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// consoleConn is the console's side of one session: the only writer to the
// client once the greeting is sent.
type consoleConn struct {
	sess *session
	msgs <-chan consoleMsg
	held *consoleMsg // read while a PAUSE waited, handled next
	// interrupt gets the CancelRequests of the session's key.
	interrupt <-chan struct{}
	out       []byte
	// skipping discards extended-protocol messages after the error that
	// refused the first of them, up to Sync, as PostgreSQL does.
	skipping bool
}

var errConsoleGone = errors.New("console client gone")

// next returns the client's next message.
func (c *consoleConn) next() consoleMsg {
	if m := c.held; m != nil {
		c.held = nil
		return *m
	}
	return <-c.msgs
}

func (c *consoleConn) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	_, err := c.sess.client.Write(c.out)
	c.out = c.out[:0]
	return err
}

func (c *consoleConn) ready() {
	c.out = appendMsg(c.out, &pgproto3.ReadyForQuery{TxStatus: wire.TxIdle})
}

func (c *consoleConn) fail(err error) {
	var ce *consoleError
	if !errors.As(err, &ce) {
		ce = &consoleError{Code: "XX000", Message: "pharos console: " + err.Error()}
	}
	c.out = wire.AppendError(c.out, "ERROR", ce.Code, ce.Message)
}

// serve answers messages until the client leaves or the session ends.
func (c *consoleConn) serve() {
	sess := c.sess
	for {
		m := c.next()
		if m.err != nil {
			var pe *wire.ProtocolError
			if errors.As(m.err, &pe) && sess.ended.Load() == nil {
				sess.end("", pe.Code, "pharos: "+pe.Message)
			}
			return
		}
		switch m.typ {
		case wire.MsgTerminate:
			return
		case wire.MsgQuery:
			if c.skipping {
				continue
			}
			if err := c.query(m.body); err != nil {
				return
			}
			c.ready()
		case wire.MsgSync:
			c.skipping = false
			c.ready()
		case 'P', 'B', 'E', 'D', 'C':
			if !c.skipping {
				c.skipping = true
				c.out = wire.AppendError(c.out, "ERROR", codeNotSupported,
					"pharos console: only the simple query protocol is supported (psql works; with pgx use QueryExecModeSimpleProtocol, with JDBC preferQueryMode=simple)")
			}
			continue
		case 'H': // Flush
		case wire.MsgFunctionCall:
			c.out = wire.AppendError(c.out, "ERROR", codeNotSupported, "pharos console: function calls are not supported")
			c.ready()
		case 'd', 'c', 'f':
			// Copy messages outside COPY are ignored, as PostgreSQL does.
			continue
		default:
			sess.end("", wire.CodeProtocolViolation, fmt.Sprintf("pharos: invalid frontend message type %q", m.typ))
			return
		}
		if c.flush() != nil {
			return
		}
	}
}

// query runs a simple Query's statements, stopping at the first error as
// PostgreSQL does. Only a lost client is returned.
func (c *consoleConn) query(body []byte) error {
	if len(body) == 0 || body[len(body)-1] != 0 {
		c.sess.end("", wire.CodeProtocolViolation, "pharos: invalid Query message: no terminating zero byte")
		return errConsoleGone
	}
	q := string(body[:len(body)-1])
	cmds, err := consolecmd.Parse(q)
	if err != nil {
		c.fail(err)
		return nil
	}
	if len(cmds) == 0 {
		c.out = appendMsg(c.out, &pgproto3.EmptyQueryResponse{})
		return nil
	}
	for _, cmd := range cmds {
		if err := c.run(cmd); err != nil {
			if errors.Is(err, errConsoleGone) {
				return err
			}
			c.fail(err)
			return nil
		}
	}
	return nil
}

// run executes one command, appending its answer.
func (c *consoleConn) run(cmd consolecmd.Command) error {
	s := c.sess.srv
	info := c.sess.info.Load()
	switch cmd.Verb {
	case consolecmd.Show:
		return c.show(cmd.What)
	case consolecmd.Reload:
		s.log.Info("RELOAD from the admin console", "user", info.user)
		if err := s.Reload(); err != nil {
			return &consoleError{Code: codeConfigFile, Message: "pharos console: RELOAD: " + err.Error()}
		}
		c.complete("RELOAD")
	case consolecmd.Pause:
		s.log.Info("PAUSE from the admin console", "user", info.user, "database", cmd.DB)
		s.admin.pause(cmd.DB)
		s.closeIdleServers(cmd.DB)
		if err := c.waitIdle(cmd.DB); err != nil {
			return err
		}
		// The connections its clients gave back meanwhile.
		s.closeIdleServers(cmd.DB)
		c.complete("PAUSE")
	case consolecmd.Resume:
		if err := s.admin.resume(cmd.DB); err != nil {
			return err
		}
		s.log.Info("RESUME from the admin console", "user", info.user, "database", cmd.DB)
		c.complete("RESUME")
	case consolecmd.Kill:
		s.admin.pause(cmd.DB)
		n := s.kill(cmd.DB)
		s.log.Info("KILL from the admin console", "user", info.user, "database", cmd.DB, "sessions", n)
		c.complete("KILL")
	}
	return nil
}

func (c *consoleConn) complete(tag string) {
	c.out = appendMsg(c.out, &pgproto3.CommandComplete{CommandTag: []byte(tag)})
}

// waitIdle returns once no server connection of db ("" for all) is in use,
// as PAUSE does in PgBouncer: in session mode, once their clients have
// left. A CancelRequest, or the client leaving, stops the wait (the pause
// stays).
func (c *consoleConn) waitIdle(db string) error {
	s := c.sess.srv
	select {
	case <-c.interrupt: // sent while nothing waited: it cancels nothing
	default:
	}
	tick := time.NewTicker(consolePoll)
	defer tick.Stop()
	for s.serversInUse(db) > 0 {
		msgs := c.msgs
		if c.held != nil {
			msgs = nil
		}
		select {
		case <-tick.C:
		case <-c.interrupt:
			return &consoleError{Code: codeQueryCanceled, Message: fmt.Sprintf(
				"canceling statement due to user request (PAUSE stopped waiting; %s stays paused until RESUME)", pausedWhat(db))}
		case m := <-msgs:
			if m.err != nil {
				return errConsoleGone
			}
			c.held = &m
		}
	}
	return nil
}

// kill cuts every session of db ("" for every database but the console's)
// with FATAL 57P01, as PostgreSQL's pg_terminate_backend does, and closes
// db's idle server connections. It returns how many sessions it cut.
func (s *Server) kill(db string) int {
	n := 0
	s.mu.Lock()
	for sess := range s.sessions {
		info := sess.info.Load()
		if info == nil || info.console || (db != "" && info.database != db) {
			continue
		}
		sess.end(metrics.ReasonAdmin, wire.CodeAdminShutdown, "terminating connection due to administrator command")
		n++
	}
	s.mu.Unlock()
	s.closeIdleServers(db)
	return n
}

// serversInUse counts the server connections of db ("" for all) that a
// client holds, or that a pool is opening or resetting.
func (s *Server) serversInUse(db string) int {
	n := 0
	for _, p := range s.poolStats() {
		if db == "" || p.Database == db {
			n += p.SvLogin + p.SvTested
		}
	}
	byConn, _ := s.heldServers()
	for _, sess := range byConn {
		if db == "" || sess.info.Load().database == db {
			n++
		}
	}
	return n
}

// Reload applies what can change while the proxy runs: the TLS
// certificate is read again, auth_file is read again, and the auth_query
// cache is dropped. What fails keeps its previous state (a half-written
// auth_file must not lock everyone out); each failure is logged, and the
// error says what failed.
func (s *Server) Reload() error {
	var errs []error
	if err := s.ReloadTLS(); err != nil {
		s.log.Error("TLS reload failed, keeping the old certificate", "err", err)
		errs = append(errs, fmt.Errorf("%w (the previous certificate stays in use)", err))
	}
	if s.users != nil {
		if err := s.users.reload(); err != nil {
			s.log.Error("auth_file reload failed, keeping the previous users", "err", err)
			errs = append(errs, err)
		}
	}
	if s.certUsers != nil {
		if err := s.certUsers.reload(); err != nil {
			s.log.Error("auth_file reload failed, keeping the previous users", "err", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// appendMsg encodes a message the console writes; they are all small.
func appendMsg(dst []byte, m pgproto3.BackendMessage) []byte {
	out, err := m.Encode(dst)
	if err != nil {
		panic(fmt.Sprintf("proxy: encode %T: %v", m, err))
	}
	return out
}
