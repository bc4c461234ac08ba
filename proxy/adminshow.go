package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// SHOW's answers. Column names are PgBouncer's where the concept is the
// same (docs/proxy.md lists them and says what differs); the tests check
// them against these lists.

// Column type OIDs: numbers are int8, everything else text.
const (
	oidInt8 = 20
	oidText = 25
)

type column struct {
	name string
	oid  uint32
}

func textCols(names ...string) []column {
	cols := make([]column, len(names))
	for i, n := range names {
		cols[i] = column{n, oidText}
	}
	return cols
}

// Columns of each SHOW, in order. A name in intCols is int8.
var (
	clientsColumns = []string{"type", "user", "database", "replication", "state", "addr", "port",
		"local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed",
		"ptr", "link", "remote_pid", "tls", "application_name", "prepared_statements", "id", "endpoint"}
	statsColumns = []string{"database", "total_server_assignment_count", "total_xact_count",
		"total_query_count", "total_received", "total_sent", "total_xact_time", "total_query_time",
		"total_wait_time", "avg_server_assignment_count", "avg_xact_count", "avg_query_count",
		"avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time"}
	statsTotalsColumns = []string{"database", "server_assignment_count", "xact_count", "query_count",
		"bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time"}
	statsAveragesColumns = statsTotalsColumns
	configColumns        = []string{"key", "value", "default", "changeable"}
	versionColumns       = []string{"version"}
	stateColumns         = []string{"key", "value"}
	intCols              = []string{"port", "local_port", "wait", "wait_us", "close_needed", "remote_pid",
		"prepared_statements", "id", "items", "pool_size", "min_pool_size", "reserve_pool_size", "server_lifetime",
		"max_connections", "current_connections", "max_client_connections", "current_client_connections",
		"paused", "disabled", "maxwait", "maxwait_us"}
)

// columns types a column list: counts and times are int8.
func columns(names []string) []column {
	cols := textCols(names...)
	for i := range cols {
		n := cols[i].name
		if slices.Contains(intCols, n) || strings.HasPrefix(n, "total_") || strings.HasPrefix(n, "avg_") ||
			strings.HasSuffix(n, "_count") || strings.HasSuffix(n, "_time") || strings.HasPrefix(n, "bytes_") ||
			strings.HasPrefix(n, "cl_") || strings.HasPrefix(n, "sv_") {
			cols[i].oid = oidInt8
		}
	}
	return cols
}

// cell is one value; null is SQL NULL.
type cell struct {
	s    string
	null bool
}

func str(s string) cell { return cell{s: s} }
func num(n uint64) cell { return cell{s: strconv.FormatUint(n, 10)} }
func inum(n int64) cell { return cell{s: strconv.FormatInt(n, 10)} }
func us(d time.Duration) cell {
	return num(uint64(max(d, 0).Microseconds()))
}

var null = cell{null: true}

// table appends a result set and its CommandComplete ("SHOW", as
// PgBouncer's console says).
func (c *consoleConn) table(cols []column, rows [][]cell) {
	rd := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(cols))}
	for i, col := range cols {
		size := int16(-1)
		if col.oid == oidInt8 {
			size = 8
		}
		rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(col.name), DataTypeOID: col.oid, DataTypeSize: size, TypeModifier: -1}
	}
	c.out = appendMsg(c.out, rd)
	dr := &pgproto3.DataRow{}
	for _, r := range rows {
		dr.Values = dr.Values[:0]
		for _, v := range r {
			if v.null {
				dr.Values = append(dr.Values, nil)
			} else {
				dr.Values = append(dr.Values, []byte(v.s))
			}
		}
		c.out = appendMsg(c.out, dr)
	}
	c.complete("SHOW")
}

// show answers SHOW what.
func (c *consoleConn) show(what string) error {
	s := c.sess.srv
	switch what {
	case "HELP":
		c.out = appendMsg(c.out, &pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000",
			Message: "Console usage", Detail: consoleHelp})
		c.complete("SHOW")
	case "VERSION":
		c.table(columns(versionColumns), [][]cell{{str("pharos " + s.cfg.Version)}})
	case "CONFIG":
		c.table(columns(configColumns), s.configRows())
	case "CLIENTS":
		c.table(columns(clientsColumns), s.clientRows(time.Now()))
	case "STATS":
		c.table(columns(statsColumns), s.statsRows(true, true))
	case "STATS_TOTALS":
		c.table(columns(statsTotalsColumns), s.statsRows(true, false))
	case "STATS_AVERAGES":
		c.table(columns(statsAveragesColumns), s.statsRows(false, true))
	case "POOLS":
		c.table(columns(poolsColumns), s.poolsTable())
	case "SERVERS":
		c.table(columns(serversColumns), s.serversTable())
	case "DATABASES":
		c.table(columns(databasesColumns), s.databasesTable())
	case "LISTS":
		c.table(columns(listsColumns), s.listsTable())
	case "STATE":
		all, dbs := s.admin.pausedList()
		c.table(columns(stateColumns), [][]cell{
			{str("active"), str(yesNo(!all))},
			{str("paused"), str(yesNo(all))},
			{str("suspended"), str("no")},
			{str("paused_databases"), str(strings.Join(dbs, ","))},
		})
	}
	return nil
}

const consoleHelp = `  SHOW HELP|POOLS|CLIENTS|SERVERS|STATS|STATS_TOTALS|STATS_AVERAGES|DATABASES|LISTS|CONFIG|STATE|VERSION
  PAUSE [<db>]     new sessions of <db> (of every database) wait; returns once its server connections are free
  RESUME [<db>]    ends PAUSE and KILL
  KILL [<db>]      cuts every session of <db> (57P01) and pauses it
  RELOAD           reads the TLS certificate and auth_file again, drops the auth_query cache`

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// consoleTime formats a timestamp as PgBouncer's console does.
func consoleTime(t time.Time) cell {
	if t.IsZero() {
		return null
	}
	return str(t.UTC().Format("2006-01-02 15:04:05 MST"))
}

func hostPort(a net.Addr) (cell, cell) {
	if a == nil {
		return null, null
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return str(a.String()), null
	}
	return str(host), str(port)
}

func tlsInfo(c net.Conn) string {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return ""
	}
	st := tc.ConnectionState()
	return tls.VersionName(st.Version) + "/" + tls.CipherSuiteName(st.CipherSuite)
}

// clientRows lists every session past its startup packet.
func (s *Server) clientRows(now time.Time) [][]cell {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		if sess.info.Load() != nil {
			sessions = append(sessions, sess)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(sessions, func(a, b *session) int { return cmpUint(a.id, b.id) })
	s.stats.mu.Lock()
	requestAt := make([]time.Time, len(sessions))
	for i, sess := range sessions {
		requestAt[i] = sess.sample.requestAt
	}
	s.stats.mu.Unlock()
	rows := make([][]cell, 0, len(sessions))
	for i, sess := range sessions {
		info := sess.info.Load()
		sess.connMu.Lock()
		client := sess.client
		backend := sess.backend
		sess.connMu.Unlock()
		state, wait := "login", time.Duration(0)
		switch w := sess.waitingSince.Load(); {
		case backend != nil || info.console:
			state = "active"
		case w != 0:
			state, wait = "waiting", now.Sub(time.Unix(0, w))
		case sess.attached.Load():
			state = "idle" // greeted by the pool, no server connection until its first message
		}
		link := null
		if backend != nil && !info.console {
			link = str(connPtr(backend))
		}
		addr, port := hostPort(client.RemoteAddr())
		laddr, lport := hostPort(client.LocalAddr())
		req := requestAt[i]
		if req.IsZero() {
			req = sess.accepted
		}
		rows = append(rows, []cell{
			str("C"), str(info.user), str(info.database), str("none"), str(state), addr, port, laddr, lport,
			consoleTime(sess.accepted), consoleTime(req), inum(int64(wait / time.Second)), inum(int64(wait % time.Second / time.Microsecond)),
			inum(0), str(ptr(sess.id)), link, inum(0), str(tlsInfo(client)), str(info.appName), inum(0),
			num(sess.id), str(sess.ep.String()),
		})
	}
	return rows
}

func ptr(id uint64) string { return fmt.Sprintf("%#x", id) }

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// statsRows lists SHOW STATS (totals, averages or both) by database.
func (s *Server) statsRows(totals, avgs bool) [][]cell {
	tot := s.statsTotals()
	avg := s.statsAverages()
	dbs := make([]string, 0, len(tot))
	for db := range tot {
		dbs = append(dbs, db)
	}
	slices.Sort(dbs)
	rows := make([][]cell, 0, len(dbs))
	for _, db := range dbs {
		row := []cell{str(db)}
		if totals {
			t := tot[db]
			row = append(row, num(t.assigned), num(t.xacts), num(t.queries), num(t.received), num(t.sent),
				us(t.xactTime), us(t.queryTime), us(t.waitTime))
		}
		if avgs {
			a := avg[db]
			row = append(row, num(a.assigned), num(a.xacts), num(a.queries), num(a.received), num(a.sent),
				num(a.xactTime), num(a.queryTime), num(a.waitTime))
		}
		rows = append(rows, row)
	}
	return rows
}

// configRow is one SHOW CONFIG line.
type configRow struct {
	key, value, def string
	changeable      bool // RELOAD applies it
}

// configRows lists the proxy's settings under their YAML keys. Secrets
// are masked; "changeable" marks what RELOAD (or SIGHUP) applies: the
// files named are read again, the keys themselves keep their values.
func (s *Server) configRows() [][]cell {
	// The defaults of a config with this auth_type (pool_mode's depends
	// on it).
	def := Config{AuthType: s.cfg.AuthType}
	def.Defaults()
	c := s.cfg
	secret := func(v string) string {
		if v == "" {
			return ""
		}
		return "********"
	}
	rows := []configRow{
		{"rw_listen", c.RWListen, def.RWListen, false},
		{"ro_listen", c.ROListen, def.ROListen, false},
		{"tls_mode", string(c.TLSMode), string(def.TLSMode), false},
		{"tls_cert_file", c.CertFile, "", true},
		{"tls_key_file", c.KeyFile, "", true},
		{"backend_tls", string(c.BackendTLS), string(def.BackendTLS), false},
		{"client_tls_ca_file", c.ClientTLSCAFile, "", false},
		{"backend_tls_ca_file", c.BackendCAFile, "", false},
		{"backend_tls_cert_file", c.BackendCertFile, "", false},
		{"backend_tls_key_file", c.BackendKeyFile, "", false},
		{"auth_type", string(c.AuthType), string(AuthPassthrough), false},
		{"auth_file", c.AuthFile, "", true},
		{"auth_user", c.AuthUser, "", false},
		{"auth_password", secret(c.AuthPassword), "", false},
		{"auth_query", c.AuthQuery, DefaultAuthQuery, false},
		{"auth_dbname", c.AuthDatabase, "postgres", false},
		{"auth_cache_ttl", configDuration(c.AuthCacheTTL), configDuration(DefaultAuthCacheTTL), false},
		{"admin_users", strings.Join(c.AdminUsers, ","), "", false},
		{"max_clients", strconv.Itoa(c.MaxClientsPerEndpoint), strconv.Itoa(def.MaxClientsPerEndpoint), false},
		{"max_pending_clients", strconv.Itoa(c.MaxPendingPerEndpoint), strconv.Itoa(def.MaxPendingPerEndpoint), false},
		{"startup_packet_timeout", configDuration(c.StartupPacketTimeout), configDuration(def.StartupPacketTimeout), false},
		{"startup_timeout", configDuration(c.StartupTimeout), configDuration(def.StartupTimeout), false},
		{"route_wait", configDuration(c.RouteWait), configDuration(def.RouteWait), false},
		{"connect_timeout", configDuration(c.ConnectTimeout), configDuration(def.ConnectTimeout), false},
		{"max_message_size", strconv.Itoa(c.MaxMessageSize), strconv.Itoa(def.MaxMessageSize), false},
		{"drain_timeout", configDuration(c.DrainTimeout), configDuration(def.DrainTimeout), false},
		{"pool_mode", string(c.PoolMode), string(def.PoolMode), false},
		{"pool_size", strconv.Itoa(c.PoolSize), strconv.Itoa(def.PoolSize), false},
		{"max_db_connections", strconv.Itoa(c.MaxDBConnections), strconv.Itoa(def.MaxDBConnections), false},
		{"server_idle_timeout", configDuration(c.ServerIdleTimeout), configDuration(def.ServerIdleTimeout), false},
		{"server_lifetime", configDuration(c.ServerLifetime), configDuration(def.ServerLifetime), false},
		{"server_reset_query", c.ServerResetQuery, def.ServerResetQuery, false},
		{"server_check_delay", configDuration(c.ServerCheckDelay), configDuration(def.ServerCheckDelay), false},
		{"query_wait_timeout", configDuration(c.QueryWaitTimeout), configDuration(def.QueryWaitTimeout), false},
		{"cancel_id", strconv.Itoa(int(s.CancelID())), "", false},
		{"stats_period", configDuration(statsPeriod), configDuration(statsPeriod), false},
	}
	out := make([][]cell, len(rows))
	for i, r := range rows {
		out[i] = []cell{str(r.key), str(r.value), str(r.def), str(yesNo(r.changeable))}
	}
	return out
}

// configDuration writes a duration the way the config file does.
func configDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}
