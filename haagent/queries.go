package haagent

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

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
	withAuth := p.cfg.ProxyAuthUser != "" && p.cfg.ProxyAuthPassword != ""
	if withAuth {
		roles = append(roles, role{p.cfg.ProxyAuthUser, p.cfg.ProxyAuthPassword, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION", ""})
	} else {
		p.log.Info("no proxy_auth_password: no login or function created for the proxies' auth_query", "proxy_auth_user", p.cfg.ProxyAuthUser)
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
	if withAuth {
		if _, err := conn.Exec(ctx, AuthFunctionSQL(p.cfg.ProxyAuthUser)); err != nil {
			return fmt.Errorf("create function pharos.get_auth: %w", err)
		}
	}
	return nil
}

// AuthFunctionSQL creates, in the database it runs in, the function the
// proxies' default auth_query calls: pharos.get_auth(user) returns the
// login role's name and verifier (NULL once its VALID UNTIL has passed),
// no row for any other name. It is SECURITY DEFINER, owned by the role
// running this (the superuser), so authUser can read a verifier without
// reading pg_authid; its search_path is fixed so no schema authUser can
// write to changes what it calls; EXECUTE is revoked from PUBLIC and
// granted to authUser alone. docs/proxy.md gives the same SQL to run by
// hand on a Patroni cluster.
func AuthFunctionSQL(authUser string) string {
	who := pgx.Identifier{authUser}.Sanitize()
	return `CREATE SCHEMA IF NOT EXISTS pharos;
REVOKE ALL ON SCHEMA pharos FROM PUBLIC;
CREATE OR REPLACE FUNCTION pharos.get_auth(p_usename text, OUT usename text, OUT passwd text)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT rolname::text, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
  FROM pg_catalog.pg_authid
  WHERE rolname = p_usename AND rolcanlogin
$$;
REVOKE ALL ON FUNCTION pharos.get_auth(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pharos TO ` + who + `;
GRANT EXECUTE ON FUNCTION pharos.get_auth(text) TO ` + who + `;`
}
