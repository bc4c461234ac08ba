package core

import (
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// Observation is everything Decide may look at: one loop's view of etcd and
// of the local PostgreSQL, and what the agent remembers between loops. The
// loop builds it; Decide never reads a clock, etcd or the disk itself.
type Observation struct {
	Now time.Time
	// WatchdogArmed: this member's watchdog is armed.
	WatchdogArmed bool
	DCS           DCSView
	Lease         LeaseView
	PG            PGView
	Memory        Memory
	// Request is the operator's request this round serves (RequestNone in
	// the loop's own rounds): requests go through Decide so that the rules
	// that protect data apply to them as to the loop.
	Request Request
}

// Request is an operator's request that changes the local server.
type Request uint8

const (
	RequestNone Request = iota
	// RequestReinitialize: wipe the data directory and clone it again
	// from the leader (REST POST /reinitialize).
	RequestReinitialize
	// RequestRestart: stop and start the server in place (REST POST
	// /restart). Not decided: it only appears in a Result.
	RequestRestart
)

// DCSView is the cluster as the last successful read of etcd saw it. When
// Reachable is false the rest is the last good view, which may be stale.
type DCSView struct {
	Reachable bool
	// Revision is the etcd revision of the read; LeaderDeletedRev the
	// revision of the last deletion of the leader key the watch saw (0:
	// none). Memory takes the election's reference revision from them.
	Revision         int64
	LeaderDeletedRev int64
	// Initialized: the initialize key exists. SystemID is empty while the
	// bootstrapping member has not finished initdb.
	Initialized bool
	SystemID    string
	// Leader names the leader key's holder ("" when there is none), and
	// LeaderEpoch is the key's create revision.
	Leader      string
	LeaderEpoch int64
	// LeaderIsMine: the leader key is attached to this agent's lease.
	LeaderIsMine bool
	// Members are the records present, keyed by name (this member's own
	// included when published). MemberRev is each record's etcd mod
	// revision and MemberSeenAt when this agent saw it change, on its own
	// clock: freshness never compares two machines' clocks.
	Members      map[string]cluster.Member
	MemberRev    map[string]int64
	MemberSeenAt map[string]time.Time
	History      cluster.History
	// Paused stops automatic promotion and demotion.
	Paused bool
	// ConfigRev is the revision of the dynamic configuration (0: none).
	ConfigRev int64
	// SyncMode is synchronous replication as the dynamic configuration
	// asks for it; Sync is the sync key (nil when absent).
	SyncMode SyncMode
	Sync     *cluster.SyncState
	// Switchover is the pending request, nil when none; SwitchoverSeenAt
	// is when this agent first saw it in its current form (local clock).
	Switchover       *cluster.Switchover
	SwitchoverSeenAt time.Time
	// SwitchoverRev is the switchover key's mod revision (0: none).
	SwitchoverRev int64
}

// LeaseView describes this agent's lease.
type LeaseView struct {
	Held bool
	// LastRenewed is when the last keep-alive that etcd acknowledged was
	// sent: etcd restarted the TTL no earlier than that.
	LastRenewed time.Time
}

// SyncMode is the synchronous replication setting.
type SyncMode struct {
	Enabled bool
	// Strict blocks writes rather than go asynchronous when no standby is
	// left.
	Strict bool
	// Count is synchronous_node_count (at least 1).
	Count int
}

// DataDirState is what the data directory holds.
type DataDirState uint8

const (
	DataMissing DataDirState = iota // empty or absent: needs bootstrap or a clone
	DataPresent                     // a PostgreSQL data directory
)

// PGView is the local PostgreSQL.
type PGView struct {
	Data     DataDirState
	SystemID string
	Running  bool
	// InRecovery is pg_is_in_recovery() when running.
	InRecovery bool
	// PendingRestart: a parameter waits for a restart to take effect.
	PendingRestart bool
	// Streaming: a standby's walreceiver streams from its upstream.
	Streaming bool
	// SyncNames are the standbys synchronous_standby_names names on a
	// running primary, "*" for any.
	SyncNames []string
	// Standby: standby.signal is present (a stopped standby, or a running
	// one).
	Standby bool
	// Timeline is the current timeline (the control file's when stopped).
	Timeline int64
	// LSN is the write position on a primary, the replay position on a
	// standby, the last checkpoint's when stopped; ReceiveLSN the last
	// position received from upstream on a standby.
	LSN        cluster.LSN
	ReceiveLSN cluster.LSN
	// Upstream is the member the standby is configured to follow ("" for
	// none).
	Upstream string
}

// Position is the furthest WAL position this server has.
func (p PGView) Position() cluster.LSN { return max(p.LSN, p.ReceiveLSN) }
