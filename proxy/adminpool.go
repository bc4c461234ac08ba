package proxy

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// SHOW POOLS, SERVERS, DATABASES and LISTS: the pools' snapshot
// (poolStats, serverConns) in PgBouncer's shape, with the sessions that
// hold a server connection of their own (pool_mode none, passthrough, a
// replication connection) beside the pooled ones.

var (
	poolsColumns = []string{"database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
		"sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode"}
	serversColumns = []string{"type", "user", "database", "replication", "state", "addr", "port",
		"local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed",
		"ptr", "link", "remote_pid", "tls", "application_name", "prepared_statements", "endpoint", "backend"}
	databasesColumns = []string{"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
		"reserve_pool_size", "server_lifetime", "pool_mode", "max_connections", "current_connections",
		"max_client_connections", "current_client_connections", "paused", "disabled"}
	listsColumns = []string{"list", "items"}
)

// connPtr names a server connection in SHOW SERVERS' ptr and SHOW
// CLIENTS' link.
func connPtr(c net.Conn) string { return fmt.Sprintf("%p", c) }

// heldServers returns the live ordinary sessions by the server connection
// each holds, and those whose connection is their own, not a pool's.
func (s *Server) heldServers() (byConn map[net.Conn]*session, own []*session) {
	byConn = make(map[net.Conn]*session)
	s.mu.Lock()
	defer s.mu.Unlock()
	for sess := range s.sessions {
		info := sess.info.Load()
		if info == nil || info.console {
			continue
		}
		sess.connMu.Lock()
		backend, pooled := sess.backend, sess.sc != nil
		sess.connMu.Unlock()
		if backend == nil {
			continue
		}
		byConn[backend] = sess
		if !pooled {
			own = append(own, sess)
		}
	}
	slices.SortFunc(own, func(a, b *session) int { return cmpUint(a.id, b.id) })
	return byConn, own
}

// poolRow is SHOW POOLS' row for a (database, user): PgBouncer's pool is
// per (database, user), pharos's per endpoint and backend too, so the
// pools of a pair are summed (the longest wait taken) and each pair has
// one row, as scripts and exporters keyed on the pair expect. Sessions
// with a server connection of their own count as active clients and
// servers of the pair, with pool_mode none.
type poolRow struct {
	database, user                                                   string
	clActive, clWaiting, svActive, svIdle, svUsed, svTested, svLogin int
	maxWait                                                          time.Duration
	mode                                                             string
}

func (s *Server) poolRows() []poolRow {
	rows := map[[2]string]*poolRow{}
	row := func(db, user, mode string) *poolRow {
		k := [2]string{db, user}
		r := rows[k]
		if r == nil {
			r = &poolRow{database: db, user: user, mode: mode}
			rows[k] = r
		}
		return r
	}
	for _, p := range s.poolStats() {
		r := row(p.Database, p.User, p.PoolMode)
		r.clActive += p.ClActive
		r.clWaiting += p.ClWaiting
		r.svActive += p.SvActive
		r.svIdle += p.SvIdle
		r.svUsed += p.SvUsed
		r.svTested += p.SvTested
		r.svLogin += p.SvLogin
		r.maxWait = max(r.maxWait, p.MaxWait)
	}
	_, own := s.heldServers()
	for _, sess := range own {
		info := sess.info.Load()
		r := row(info.database, info.user, string(PoolNone))
		r.clActive++
		r.svActive++
	}
	out := make([]poolRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b poolRow) int {
		if c := strings.Compare(a.database, b.database); c != 0 {
			return c
		}
		return strings.Compare(a.user, b.user)
	})
	return out
}

func count(n int) cell { return inum(int64(n)) }

func (s *Server) poolsTable() [][]cell {
	var rows [][]cell
	for _, r := range s.poolRows() {
		rows = append(rows, []cell{str(r.database), str(r.user), count(r.clActive), count(r.clWaiting),
			count(r.svActive), count(r.svIdle), count(r.svUsed), count(r.svTested), count(r.svLogin),
			inum(int64(r.maxWait / time.Second)), inum(int64(r.maxWait % time.Second / time.Microsecond)), str(r.mode)})
	}
	return rows
}

func (s *Server) serversTable() [][]cell {
	byConn, own := s.heldServers()
	var rows [][]cell
	link := func(conn net.Conn) (cell, cell) {
		if sess := byConn[conn]; sess != nil {
			return str(ptr(sess.id)), str(sess.info.Load().appName)
		}
		return null, str("")
	}
	for _, c := range s.serverConns() {
		conn := c.conn.conn
		laddr, lport := hostPort(conn.LocalAddr())
		l, app := link(conn)
		rows = append(rows, []cell{str(c.Type), str(c.User), str(c.Database), str("none"), str(c.State),
			str(c.Addr), str(c.Port), laddr, lport, consoleTime(c.ConnectTime), consoleTime(c.RequestTime),
			inum(0), inum(0), inum(0), str(connPtr(conn)), l, inum(int64(c.RemotePID)), str(tlsInfo(conn)),
			app, inum(0), str(c.Endpoint), str(c.Backend)})
	}
	for _, sess := range own {
		info := sess.info.Load()
		sess.connMu.Lock()
		conn := sess.backend
		sess.connMu.Unlock()
		if conn == nil {
			continue
		}
		addr, port := hostPort(conn.RemoteAddr())
		laddr, lport := hostPort(conn.LocalAddr())
		rows = append(rows, []cell{str("S"), str(info.user), str(info.database), str("none"), str("active"),
			addr, port, laddr, lport, null, null, inum(0), inum(0), inum(0), str(connPtr(conn)), str(ptr(sess.id)),
			null, str(tlsInfo(conn)), str(info.appName), inum(0), str(sess.ep.String()), null})
	}
	return rows
}

// dbRow is what SHOW DATABASES and SHOW LISTS count per database.
type dbRow struct {
	servers, clients int
	users            map[string]bool
}

// databases returns every database the proxy knows of: with clients,
// pools or statistics, or paused.
func (s *Server) databases() map[string]*dbRow {
	dbs := map[string]*dbRow{}
	get := func(db string) *dbRow {
		r := dbs[db]
		if r == nil {
			r = &dbRow{users: map[string]bool{}}
			dbs[db] = r
		}
		return r
	}
	for _, c := range s.serverConns() {
		get(c.Database).servers++
	}
	_, own := s.heldServers()
	for _, sess := range own {
		get(sess.info.Load().database).servers++
	}
	s.mu.Lock()
	for sess := range s.sessions {
		if info := sess.info.Load(); info != nil && !info.console {
			r := get(info.database)
			r.clients++
			r.users[info.user] = true
		}
	}
	for db := range s.retiredTotals {
		get(db)
	}
	s.mu.Unlock()
	_, paused := s.admin.pausedList()
	for _, db := range paused {
		get(db)
	}
	return dbs
}

func (s *Server) databasesTable() [][]cell {
	dbs := s.databases()
	names := make([]string, 0, len(dbs))
	for db := range dbs {
		names = append(names, db)
	}
	slices.Sort(names)
	var rows [][]cell
	for _, db := range names {
		r := dbs[db]
		paused, _ := s.admin.pausedFor(db)
		p := 0
		if paused {
			p = 1
		}
		rows = append(rows, []cell{str(db), null, null, str(db), null, count(s.cfg.PoolSize), count(0), count(0),
			inum(int64(s.cfg.ServerLifetime / time.Second)), str(string(s.cfg.PoolMode)), count(s.cfg.MaxDBConnections),
			count(r.servers), count(0), count(r.clients), count(p), count(0)})
	}
	return rows
}

func (s *Server) listsTable() [][]cell {
	dbs := s.databases()
	users := map[string]bool{}
	for _, r := range dbs {
		for u := range r.users {
			users[u] = true
		}
	}
	pools := s.poolRows()
	servers := len(s.serverConns())
	_, own := s.heldServers()
	var used, login int
	s.mu.Lock()
	for sess := range s.sessions {
		if sess.info.Load() == nil {
			continue
		}
		used++
		if !sess.attached.Load() && sess.waitingSince.Load() == 0 {
			login++
		}
	}
	s.mu.Unlock()
	items := []struct {
		name string
		n    int
	}{
		{"databases", len(dbs)}, {"users", len(users)}, {"pools", len(pools)}, {"free_clients", 0},
		{"used_clients", used}, {"login_clients", login}, {"free_servers", 0}, {"used_servers", servers + len(own)},
		{"dns_names", 0}, {"dns_zones", 0}, {"dns_queries", 0}, {"dns_pending", 0},
	}
	rows := make([][]cell, len(items))
	for i, it := range items {
		rows[i] = []cell{str(it.name), count(it.n)}
	}
	return rows
}
