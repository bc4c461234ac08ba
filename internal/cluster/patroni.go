package cluster

// Reading a Patroni cluster's etcd v3 keys into the pharos model (DESIGN §3,
// last bullet), so the proxy can stand in front of an existing Patroni
// cluster in place of HAProxy.
//
// Everything below was checked against Patroni's source (github.com/patroni/
// patroni); paths are given where each fact comes from.
//
// The key layout is described in patronikeys.go.
//
// Member record fields (patroni/ha.py, Ha.touch_member):
//   - conn_url: "postgres://<connect_address>/<database>", built by
//     patroni/utils.py uri(), which brackets an IPv6 host. Patroni reads the
//     port as "port or 5432" (patroni/dcs/__init__.py, Member.conn_kwargs).
//   - api_url: the member's REST API, e.g. "http://10.0.0.1:8008/patroni".
//   - state: a PostgresqlState value (patroni/postgresql/misc.py): running,
//     starting, restarting, stopping, stopped, crashed, start failed,
//     restart failed, stop failed, creating replica, initializing new
//     cluster, initdb failed, running custom bootstrap script, starting
//     after custom bootstrap, custom bootstrap failed.
//   - role: a PostgresqlRole value (patroni/postgresql/misc.py): primary,
//     master, standby_leader, replica, demoted, uninitialized, promoted.
//     Patroni before 4.0.0 writes "master" where 4.0.0 and later write
//     "primary" (docs/releases.rst, 4.0.0 breaking changes). "promoted" is
//     set right after pg_ctl promote and stays until promotion finished
//     (patroni/postgresql/__init__.py, Postgresql.promote; patroni#3603).
//   - version: the Patroni version.
//   - xlog_location, timeline, replay_lsn, receive_lsn, replication_state:
//     written only while state is running, restarting or starting. All LSNs
//     are integer byte positions, not "X/X" text. xlog_location is
//     pg_current_wal_flush_lsn() (pg_current_wal_lsn() before 9.6) on a
//     primary and max(receive, replay) on a node in recovery
//     (patroni/postgresql/__init__.py, TL_LSN, _wal_position,
//     timeline_wal_position). replay_lsn, receive_lsn and replication_state
//     ("streaming" or "in archive recovery", PostgreSQL 9.6+;
//     replication_state_from_parameters) appear only on nodes in recovery,
//     and only with recent Patroni versions.
//   - tags: the member's effective tags. Patroni reads nofailover,
//     noloadbalance, nosync and clonefrom with Python truthiness, so
//     "false" as a string counts as set; nofailover, when absent, follows
//     failover_priority <= 0 (patroni/tags.py).
//   - pending_restart, pending_restart_reason, scheduled_restart, pause,
//     proxy_url, checkpoint_after_promote: not needed for routing.
//
// Role mapping (state groups as in patroniRole):
//
//	Patroni role            state                      pharos role
//	master, primary         running                    RolePrimary
//	promoted                running                    RoleStarting
//	replica, standby_leader running                    RoleReplica
//	uninitialized           running                    RoleStarting
//	demoted                 any known state            RoleDemoted
//	any other known role    starting, restarting,      RoleStarting
//	                        creating replica, ...
//	any other known role    stopped, crashed, start    RoleStopped
//	                        failed, stopping, ...
//	unknown or missing      -                          error
//
// "promoted" is not routable: Patroni's /primary answers 200 as soon as the
// node holds the leader key, while PostgreSQL is still read-only
// (patroni/api.py, do_GET; patroni#2972, patroni#3603), so a proxy that
// trusted it would send writes to a node that refuses them. A
// standby_leader (the leader of a standby cluster) replicates from another
// cluster: it is routed as a replica and never as rw, even though it holds
// the leader key. Older Patroni versions (before the "promoted" role, which
// came with the 3.0 line) set "master" right after pg_ctl promote, so with
// those a record can say master while promotion is still running; nothing
// in the record tells the two apart.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
)

// ParsePatroniLeader reads the leader key's value: the member name, as is.
func ParsePatroniLeader(data []byte) (string, error) {
	name := string(data)
	if !ValidName(name) {
		return "", fmt.Errorf("patroni leader key: %q is not a member name", name)
	}
	return name, nil
}

// ParsePatroniStatus reads the leader's last known WAL position from the
// "status" key (a JSON object with an integer "optime") or from the legacy
// "optime/leader" key (a bare integer). Zero means Patroni knows none.
func ParsePatroniStatus(data []byte) (LSN, error) {
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return 0, fmt.Errorf("patroni status: %w", err)
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0, errors.New("patroni status: empty")
	}
	switch raw[0] {
	case '{':
		var st struct {
			Optime json.RawMessage `json:"optime"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return 0, fmt.Errorf("patroni status: %w", err)
		}
		if len(st.Optime) == 0 || string(st.Optime) == "null" {
			return 0, errors.New("patroni status: no optime")
		}
		// Status.from_node reads it with int(), which takes numeric strings too.
		v, ok := patroniUint(st.Optime)
		if !ok {
			return 0, fmt.Errorf("patroni status: optime %s is not a byte position", st.Optime)
		}
		return LSN(v), nil
	case '"', '[', 't', 'f', 'n':
		return 0, fmt.Errorf("patroni status: %.40s is neither an object nor an integer", raw)
	}
	v, ok := patroniUint(raw)
	if !ok {
		return 0, fmt.Errorf("patroni optime: %.40s is not a byte position", raw)
	}
	return LSN(v), nil
}

// patroniMember holds the member record fields pharos reads.
type patroniMember struct {
	ConnURL          string          `json:"conn_url"`
	APIURL           string          `json:"api_url"`
	State            string          `json:"state"`
	Role             string          `json:"role"`
	XLogLocation     json.RawMessage `json:"xlog_location"`
	ReplayLSN        json.RawMessage `json:"replay_lsn"`
	ReceiveLSN       json.RawMessage `json:"receive_lsn"`
	ReplicationState string          `json:"replication_state"`
	Timeline         json.RawMessage `json:"timeline"`
	Tags             map[string]any  `json:"tags"`
}

// ParsePatroniMember maps the record Patroni keeps at members/<name> into
// a Member and validates it. The role and state must be ones Patroni
// writes and conn_url must name one host; numeric fields Patroni itself
// would not understand (xlog_location, timeline, ...) are read as unknown
// rather than failing the record, so that a primary stays routable.
//
// LSN is replay_lsn when present (a node in recovery, recent Patroni),
// else xlog_location; ReceiveLSN is receive_lsn. LagBytes stays unknown:
// use PatroniLag with the status key's optime. State is Patroni's state,
// or for a running node in recovery its replication_state, as patronictl
// list shows it (patroni/utils.py, cluster_as_json).
func ParsePatroniMember(name string, data []byte) (Member, error) {
	m, err := parsePatroniMember(name, data)
	if err != nil {
		return Member{}, fmt.Errorf("patroni member %q: %w", name, err)
	}
	return m, nil
}

func parsePatroniMember(name string, data []byte) (Member, error) {
	if !ValidName(name) {
		return Member{}, errors.New("name has characters other than letters, digits, '-', '_' and '.', or is longer than 128")
	}
	if trimmed := strings.TrimSpace(string(data)); strings.HasPrefix(trimmed, "postgres") {
		// Governor's format, still accepted by Member.from_node
		// (patroni/dcs/__init__.py): no role or state to route by.
		return Member{}, errors.New("record is a bare connection string (Governor format) without role or state")
	}
	var p patroniMember
	if err := json.Unmarshal(data, &p); err != nil {
		return Member{}, err
	}
	role, err := patroniRole(p.Role, p.State)
	if err != nil {
		return Member{}, err
	}
	host, port, err := parseConnURL(p.ConnURL)
	if err != nil {
		return Member{}, err
	}
	m := Member{
		Name:   name,
		Role:   role,
		State:  p.State,
		Host:   host,
		Port:   port,
		APIURL: p.APIURL,
		Tags:   patroniTags(p.Tags),
	}
	if p.State == "running" && p.ReplicationState != "" {
		m.State = p.ReplicationState
	}
	if v, ok := patroniUint(p.XLogLocation); ok {
		m.LSN = LSN(v)
	}
	if v, ok := patroniUint(p.ReplayLSN); ok {
		m.LSN = LSN(v)
	}
	if v, ok := patroniUint(p.ReceiveLSN); ok {
		m.ReceiveLSN = LSN(v)
	}
	if v, ok := patroniUint(p.Timeline); ok && v <= math.MaxInt64 {
		m.Timeline = int64(v)
	}
	if err := m.Validate(); err != nil {
		return Member{}, err
	}
	return m, nil
}

// patroniRole maps Patroni's role and PostgreSQL state to a pharos role;
// see the table at the top of this file.
func patroniRole(role, state string) (Role, error) {
	var running, transient bool
	switch state {
	case "running":
		running = true
	case "starting", "restarting", "starting after custom bootstrap",
		"creating replica", "initializing new cluster", "running custom bootstrap script":
		transient = true
	case "stopped", "stopping", "stop failed", "crashed", "start failed",
		"restart failed", "initdb failed", "custom bootstrap failed":
	case "":
		return "", errors.New("state is missing")
	default:
		return "", fmt.Errorf("state %q is not one Patroni writes", state)
	}
	switch role {
	case "master", "primary", "promoted", "replica", "standby_leader", "uninitialized":
	case "demoted":
		return RoleDemoted, nil
	case "":
		return "", errors.New("role is missing")
	default:
		return "", fmt.Errorf("role %q is not one Patroni writes", role)
	}
	switch {
	case !running && transient:
		return RoleStarting, nil
	case !running:
		return RoleStopped, nil
	}
	switch role {
	case "master", "primary":
		return RolePrimary, nil
	case "replica", "standby_leader":
		return RoleReplica, nil
	}
	return RoleStarting, nil // promoted, uninitialized
}

// parseConnURL reads host and port from Patroni's conn_url. Errors leave
// the URL out: a hand-written one could carry a password.
func parseConnURL(s string) (string, int, error) {
	if s == "" {
		return "", 0, errors.New("conn_url is missing")
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", 0, fmt.Errorf("conn_url: %w", err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return "", 0, fmt.Errorf("conn_url scheme %q is not postgres or postgresql", u.Scheme)
	}
	host := u.Hostname()
	switch {
	case host == "":
		return "", 0, errors.New("conn_url has no host")
	case strings.Contains(host, ","):
		return "", 0, errors.New("conn_url names several hosts")
	}
	if u.Port() == "" {
		return host, 5432, nil
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("conn_url port %.20q is out of range", u.Port())
	}
	return host, port, nil
}

// patroniTags reads the tags Patroni's own checks read, with Patroni's
// Python truthiness (patroni/tags.py).
func patroniTags(tags map[string]any) Tags {
	var t Tags
	t.NoLoadBalance = pyTruthy(tags["noloadbalance"])
	prio, hasPrio := pyInt(tags["failover_priority"])
	if hasPrio && prio >= math.MinInt32 && prio <= math.MaxInt32 {
		t.FailoverPriority = int(prio)
	}
	if v, ok := tags["nofailover"]; ok && v != nil {
		t.NoFailover = pyTruthy(v)
	} else {
		t.NoFailover = hasPrio && prio <= 0
	}
	return t
}

// pyTruthy is Python's bool() on a decoded JSON value.
func pyTruthy(v any) bool {
	switch t := v.(type) {
	case nil:
		return false
	case bool:
		return t
	case float64:
		return t != 0
	case string:
		return t != ""
	case []any:
		return len(t) > 0
	case map[string]any:
		return len(t) > 0
	}
	return true
}

// pyInt reads an integer given as a JSON number or a decimal string, as
// Patroni's parse_int does for failover_priority.
func pyInt(v any) (int64, bool) {
	switch t := v.(type) {
	case float64:
		if t != math.Trunc(t) || t < math.MinInt64 || t >= math.MaxInt64 {
			return 0, false
		}
		return int64(t), true
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
		return n, err == nil
	}
	return 0, false
}

// patroniUint reads a non-negative integer written as a JSON number or as
// a decimal string; ok is false for anything else, null included.
func patroniUint(raw json.RawMessage) (uint64, bool) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return 0, false
	}
	if s[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, false
		}
		s = strings.TrimSpace(s)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// PatroniLag is a member's lag in bytes behind the leader's optime (from
// the status key), or -1 when either position is unknown. A member ahead
// of the optime has lag 0: the leader refreshes the status key only once
// per HA loop (loop_wait), as members refresh their records, so the figure
// is coarse, and Patroni treats it the same way (patroni/utils.py,
// cluster_as_json). For a replica whose Patroni does not publish
// replay_lsn, the member's LSN is max(receive, replay) and the lag is the
// smaller receive lag.
func PatroniLag(leaderOptime LSN, m Member) int64 {
	if leaderOptime == 0 || m.LSN == 0 {
		return -1
	}
	if m.LSN >= leaderOptime {
		return 0
	}
	d := uint64(leaderOptime - m.LSN)
	if d > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(d)
}
