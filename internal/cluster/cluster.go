// Package cluster owns the shared model of a pharos cluster as it lives in
// etcd: the key layout under /pharos/<cluster>/, the member record the
// agent publishes, and its (de)serialisation and validation. It also reads
// a Patroni cluster's member records into the same model, so the proxy can
// follow an existing Patroni cluster.
//
// The agent writes these records and the router reads them. This package
// must not know the etcd client (keys and values are strings and bytes
// here), the proxy, or HA decisions, with one exception: who may take over
// in a switchover (takeover.go) is checked both by ctl, before it writes a
// request, and by the leader's Decide, before it hands over, so the rule
// lives here, where both can import it.
package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Role is a member's role as its agent publishes it.
type Role string

const (
	RolePrimary  Role = "primary"  // accepts writes; the only rw target, and only when it holds the leader key
	RoleReplica  Role = "replica"  // streaming standby
	RoleStarting Role = "starting" // bootstrapping, cloning or promoting: not routable
	RoleDemoted  Role = "demoted"  // a former primary that stopped accepting writes
	RoleStopped  Role = "stopped"  // PostgreSQL is down
)

func (r Role) valid() bool {
	switch r {
	case RolePrimary, RoleReplica, RoleStarting, RoleDemoted, RoleStopped:
		return true
	}
	return false
}

// Tags are operator hints on a member.
type Tags struct {
	NoFailover       bool `json:"nofailover,omitempty"`
	NoLoadBalance    bool `json:"noloadbalance,omitempty"`
	FailoverPriority int  `json:"failover_priority,omitempty"`
}

// Member is the record at members/<name>, on the member's own lease.
type Member struct {
	Name  string `json:"name"`
	Role  Role   `json:"role"`
	State string `json:"state,omitempty"` // free text for humans, e.g. "running", "streaming from n1", "creating replica 45%": never parsed by readers (but see legacyStream)
	// Upstream is the member a replica follows (its primary_conninfo), ""
	// when it has none or is not a replica.
	Upstream string `json:"upstream,omitempty"`
	// Streaming says a replica's WAL receiver streams from Upstream; a
	// replica that is still connecting, or replays only what it has, is
	// not streaming. Neither field makes a record invalid: a reader that
	// finds an odd pair (streaming from "", or from a name that is no
	// member) simply sees no replica of its leader (StreamsFrom).
	Streaming bool   `json:"streaming,omitempty"`
	Host      string `json:"host"`
	Port      int    `json:"port"`
	APIURL    string `json:"api_url,omitempty"`

	Timeline   int64 `json:"timeline,omitempty"`
	LSN        LSN   `json:"lsn,omitempty"`         // write LSN on a primary, replay LSN on a replica
	ReceiveLSN LSN   `json:"receive_lsn,omitempty"` // replicas only
	// LagBytes is the replica's replay lag behind the primary as its agent
	// last measured it; -1 or absent means unknown.
	LagBytes *int64 `json:"lag_bytes,omitempty"`
	// Epoch is the leadership epoch (the leader key's create revision) the
	// member last saw.
	Epoch int64 `json:"epoch,omitempty"`

	Tags Tags `json:"tags,omitzero"`
	// PendingRestart: a parameter changed that PostgreSQL applies only at
	// the next restart.
	PendingRestart bool      `json:"pending_restart,omitempty"`
	UpdatedAt      time.Time `json:"updated_at,omitzero"`
}

// Addr is host:port.
func (m Member) Addr() string {
	return joinHostPort(m.Host, m.Port)
}

func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + strconv.Itoa(port)
	}
	return host + ":" + strconv.Itoa(port)
}

// StreamsFrom reports whether the record shows a replica streaming WAL
// from leader.
func (m Member) StreamsFrom(leader string) bool {
	return m.Role == RoleReplica && m.Streaming && leader != "" && m.Upstream == leader
}

// legacyStream fills Upstream and Streaming of a record written by an
// agent that published them only in State, as "streaming from <name>" or
// "connecting to <name>" (the only two states that named an upstream), so
// that readers need look at the typed fields alone while a cluster is
// upgraded one member at a time. It changes nothing when the record has
// either typed field, is not a replica's, or its State is anything else
// (the upstream stays unknown: "", not streaming). New agents still write
// those states, for humans and for older readers.
func (m *Member) legacyStream() {
	if m.Role != RoleReplica || m.Upstream != "" || m.Streaming {
		return
	}
	if up, ok := strings.CutPrefix(m.State, "streaming from "); ok && ValidName(up) {
		m.Upstream, m.Streaming = up, true
	} else if up, ok := strings.CutPrefix(m.State, "connecting to "); ok && ValidName(up) {
		m.Upstream = up
	}
}

// Lag returns the replay lag in bytes, or -1 when unknown.
func (m Member) Lag() int64 {
	if m.LagBytes == nil || *m.LagBytes < 0 {
		return -1
	}
	return *m.LagBytes
}

// Validate reports the first field that makes the record unusable for
// routing.
func (m Member) Validate() error {
	switch {
	case m.Name == "":
		return errors.New("name is empty")
	case !ValidName(m.Name):
		return fmt.Errorf("name %q is not a member name: at most 128 letters, digits, '-', '_' and '.', and not \".\" or \"..\"", m.Name)
	case !m.Role.valid():
		return fmt.Errorf("role %q is not one of primary, replica, starting, demoted, stopped", m.Role)
	case m.Port < 1 || m.Port > 65535:
		return fmt.Errorf("port %d is out of range", m.Port)
	}
	// Agents put the host into connection strings: a forged record must
	// not carry keywords there.
	return CheckHost(m.Host)
}

// ValidName reports whether name can be a member name (and so a key
// segment).
func ValidName(name string) bool {
	if name == "" || len(name) > 128 || name == "." || name == ".." {
		return false
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return true
}

// MarshalMember encodes a member record.
func MarshalMember(m Member) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("member record: %w", err)
	}
	return json.Marshal(m)
}

// ParseMember decodes and validates a member record. Unknown fields are
// ignored so that newer agents can add some; a record of an older agent,
// without upstream and streaming, gets them from its state (legacyStream).
func ParseMember(data []byte) (Member, error) {
	var m Member
	if err := json.Unmarshal(data, &m); err != nil {
		return Member{}, fmt.Errorf("member record: %w", err)
	}
	m.legacyStream()
	if err := m.Validate(); err != nil {
		return Member{}, fmt.Errorf("member record: %w", err)
	}
	return m, nil
}

// LSN is a PostgreSQL WAL position, written "16/B374D848" like
// pg_current_wal_lsn().
type LSN uint64

func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l))
}

// ParseLSN parses the "hi/lo" hexadecimal form.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("LSN %q is not of the form 16/B374D848", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}
