package metrics

import "github.com/prometheus/client_golang/prometheus"

// Agent holds the agent's metrics. Roles are the closed set of
// cluster roles (primary, replica, starting, demoted, stopped).
type Agent struct {
	// IsLeader is 1 while this member holds the leader key.
	IsLeader prometheus.Gauge
	// Role is 1 for the role the member last published, 0 for the others.
	Role *prometheus.GaugeVec
	// EtcdUp is 1 when the last read of the cluster from etcd succeeded.
	EtcdUp prometheus.Gauge
	// RenewalAge is the time since the last acknowledged lease renewal.
	RenewalAge prometheus.Gauge
	// WatchdogArmed is 1 while a watchdog guards this member's primary.
	WatchdogArmed prometheus.Gauge
	// LagBytes is this replica's replay lag (-1 unknown, 0 on the primary).
	LagBytes prometheus.Gauge
	// Timeline is the server's current timeline.
	Timeline prometheus.Gauge
	// Promotions counts promotions of this member, by reason (failover,
	// switchover, manual failover, bootstrap).
	Promotions *prometheus.CounterVec
	// Demotions counts demotions (fencing, lost election, switchover).
	Demotions prometheus.Counter
	// ActionFailures counts plan steps that failed, by action.
	ActionFailures *prometheus.CounterVec
	// PendingRestart is 1 when a parameter waits for a restart.
	PendingRestart prometheus.Gauge
	// SyncStandbys counts the synchronous standbys (leader only).
	SyncStandbys prometheus.Gauge
	// SyncDegraded is 1 when synchronous mode fell back to asynchronous
	// commits (non-strict, no healthy standby).
	SyncDegraded prometheus.Gauge
	// Paused is 1 while the cluster is paused (no automatic failover), as
	// this agent last read it.
	Paused prometheus.Gauge
	// Rewinds counts pg_rewind runs by outcome (RewindOutcomes).
	Rewinds *prometheus.CounterVec
	// Reclones counts data directories wiped and cloned again, by reason:
	// the agent's closed set of failures a rewind cannot get past, or an
	// operator's reinitialize. The agent creates its series at start.
	Reclones *prometheus.CounterVec
}

// RewindOutcomes are the values of the outcome label of Rewinds: done, a
// failure the next round retries, a failure that needs a fresh copy.
var RewindOutcomes = []string{"done", "retry", "failed"}

// AgentRoles are the values of the role label.
var AgentRoles = []string{"primary", "replica", "starting", "demoted", "stopped"}

// NewAgent registers the agent's metrics on reg.
func NewAgent(reg prometheus.Registerer) *Agent {
	m := &Agent{
		IsLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_is_leader", Help: "1 while this member holds the leader key.",
		}),
		Role: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_agent_role", Help: "1 for the role this member last published, 0 for the others.",
		}, []string{"role"}),
		EtcdUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_etcd_up", Help: "1 when the agent's last read of the cluster from etcd succeeded.",
		}),
		RenewalAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_lease_renewal_age_seconds", Help: "Time since etcd last acknowledged a renewal of the agent's lease.",
		}),
		WatchdogArmed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_watchdog_armed", Help: "1 while a watchdog guards this member's primary.",
		}),
		LagBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_replication_lag_bytes", Help: "Replay lag behind the leader in bytes (0 on the primary, -1 unknown).",
		}),
		Timeline: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_timeline", Help: "The server's current timeline.",
		}),
		Promotions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_agent_promotions_total", Help: "Promotions of this member, by reason.",
		}, []string{"reason"}),
		Demotions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pharos_agent_demotions_total", Help: "Times this member stopped a primary it ran (fencing, a lost election, a switchover).",
		}),
		ActionFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_agent_action_failures_total", Help: "Plan steps that failed, by action.",
		}, []string{"action"}),
		PendingRestart: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_pending_restart", Help: "1 when a changed parameter waits for a restart.",
		}),
		SyncStandbys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_sync_standbys", Help: "Synchronous standbys this leader's commits wait for.",
		}),
		SyncDegraded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_sync_degraded", Help: "1 when synchronous mode fell back to asynchronous commits (no healthy standby, not strict).",
		}),
		Paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_agent_paused", Help: "1 while the cluster is paused: no automatic failover or promotion (fencing still applies).",
		}),
		Rewinds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_agent_rewinds_total", Help: "pg_rewind runs, by outcome: done, retry (a failure a later round may get past), failed (needs a fresh copy).",
		}, []string{"outcome"}),
		Reclones: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_agent_reclones_total", Help: "Data directories wiped and cloned again, by reason (why a rewind could not work, or reinitialize).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.IsLeader, m.Role, m.EtcdUp, m.RenewalAge, m.WatchdogArmed, m.LagBytes, m.Timeline,
		m.Promotions, m.Demotions, m.ActionFailures, m.PendingRestart, m.SyncStandbys, m.SyncDegraded, m.Paused,
		m.Rewinds, m.Reclones)
	for _, r := range AgentRoles {
		m.Role.WithLabelValues(r)
	}
	for _, o := range RewindOutcomes {
		m.Rewinds.WithLabelValues(o)
	}
	for _, r := range []string{"failover", "switchover", "manual failover", "bootstrap"} {
		m.Promotions.WithLabelValues(r)
	}
	return m
}
