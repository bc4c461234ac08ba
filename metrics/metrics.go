// Package metrics owns every Prometheus metric pharos exports: their names,
// help texts, label sets (closed enums, so cardinality is bounded by code,
// not by traffic) and the /metrics handler.
//
// It must not know business logic: callers tell it what happened through the
// typed fields below; it never decides anything.
//
// Its Go API carries no stability promise: pharos ships a binary, and
// these packages change with it.
package metrics

import (
	"net/http"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Endpoint label values.
const (
	EndpointRW = "rw"
	EndpointRO = "ro"
)

// Outcome says how a client session's startup ended (label of
// pharos_proxy_sessions_total).
type Outcome string

const (
	OutcomeOK             Outcome = "ok"               // backend attached, session ran
	OutcomeAuthFailed     Outcome = "auth_failed"      // the server refused the credentials
	OutcomeServerRefused  Outcome = "server_refused"   // any other server error before ReadyForQuery
	OutcomeNoBackend      Outcome = "no_backend"       // no route for the endpoint in time
	OutcomeBackendError   Outcome = "backend_error"    // dial or TLS to the backend failed
	OutcomeTooManyClients Outcome = "too_many_clients" // endpoint limit of authenticated sessions
	OutcomeTooManyPending Outcome = "too_many_pending" // closed at accept: endpoint limit of connections still logging in
	OutcomeProtocolError  Outcome = "protocol_error"   // malformed startup from the client
	OutcomeTLSError       Outcome = "tls_error"        // client TLS handshake or policy
	OutcomeTimeout        Outcome = "startup_timeout"  // client too slow in the startup phase
	OutcomeClientGone     Outcome = "client_gone"      // client left before startup completed
	OutcomeCancelRequest  Outcome = "cancel_request"   // the connection carried a CancelRequest
	OutcomeShuttingDown   Outcome = "shutting_down"    // arrived while the proxy drains
)

// TerminateReason says why the proxy cut an established session (label of
// pharos_proxy_sessions_terminated_total).
type TerminateReason string

const (
	ReasonFenced            TerminateReason = "fenced"             // its backend stopped being a valid target
	ReasonShutdown          TerminateReason = "shutdown"           // the proxy drained and stopped
	ReasonProtocolViolation TerminateReason = "protocol_violation" // malformed message from the client
	ReasonMessageTooLarge   TerminateReason = "message_too_large"  // client message over the limit
	ReasonBackendLost       TerminateReason = "backend_lost"       // backend connection failed mid-session
	ReasonAdmin             TerminateReason = "admin"              // KILL on the admin console
)

// Direction label values for byte counters.
const (
	DirClientToBackend = "client_to_backend"
	DirBackendToClient = "backend_to_client"
)

// CancelResult label values.
const (
	CancelForwarded = "forwarded"          // sent to the server connection the key's session uses
	CancelToProxy   = "forwarded_to_proxy" // the key is another proxy's: sent to it
	CancelNoServer  = "no_server"          // the key's session has no server connection now
	CancelConsole   = "console"            // the key is an admin console's: its waiting command stops
	CancelUnknown   = "unknown_key"        // no session has the key (or the secret is wrong)
	CancelFailed    = "failed"             // the server or proxy could not be reached
)

// Pool states (label state of pharos_proxy_pool_clients and
// pharos_proxy_pool_servers).
const (
	PoolActive  = "active"  // clients: logged in and not waiting; servers: in use by a client
	PoolWaiting = "waiting" // clients waiting for a server connection
	PoolIdle    = "idle"    // servers in the pool, ready for reuse
)

// PoolOutcome says what happened to a pooled server connection (label of
// pharos_proxy_pool_server_connections_total).
type PoolOutcome string

const (
	PoolOpened      PoolOutcome = "opened"       // a new server connection logged in
	PoolReused      PoolOutcome = "reused"       // an idle one was handed to a client
	PoolResetFailed PoolOutcome = "reset_failed" // server_reset_query failed or timed out: closed
	PoolExpired     PoolOutcome = "expired"      // past server_lifetime or server_idle_timeout: closed
	PoolCheckFailed PoolOutcome = "check_failed" // found closed, or failed its health check, before reuse: closed
	PoolDiscarded   PoolOutcome = "discarded"    // its client left mid-transaction or mid-request: closed, not reused
	PoolFenced      PoolOutcome = "fenced"       // its backend stopped being a valid target: closed
)

// Proxy holds the proxy's and router's metrics.
type Proxy struct {
	Clients          *prometheus.GaugeVec     // endpoint
	PendingClients   *prometheus.GaugeVec     // endpoint
	Sessions         *prometheus.CounterVec   // endpoint, outcome
	Terminated       *prometheus.CounterVec   // reason
	BackendConnect   *prometheus.HistogramVec // endpoint
	Bytes            *prometheus.CounterVec   // direction
	Cancels          *prometheus.CounterVec   // result
	BackendUp        *prometheus.GaugeVec     // backend
	BackendRole      *prometheus.GaugeVec     // backend, role
	BackendLag       *prometheus.GaugeVec     // backend
	BackendSessions  *prometheus.GaugeVec     // backend
	HealthCheckError *prometheus.CounterVec   // backend
	SplitBrain       prometheus.Counter
	RWAvailable      prometheus.Gauge
	ROBackends       prometheus.Gauge
	TopologyChanges  prometheus.Counter
	EtcdUp           prometheus.Gauge
	LeaderEpoch      prometheus.Gauge
	RouteSwitch      prometheus.Histogram
	EtcdIgnored      *prometheus.GaugeVec // reason: IgnoredUnleased, IgnoredInvalid
	Registered       prometheus.Gauge     // the proxy's record is in etcd (registry)
	CancelID         prometheus.Gauge     // the cancel ID the proxy's keys carry

	PoolClients     *prometheus.GaugeVec   // endpoint, state: PoolActive, PoolWaiting
	PoolServers     *prometheus.GaugeVec   // endpoint, state: PoolActive, PoolIdle
	PoolWait        prometheus.Histogram   // time a client waited for a server connection
	PoolServerConns *prometheus.CounterVec // endpoint, outcome
}

// Reasons the etcd source ignores a record (pharos_router_etcd_records_ignored).
const (
	IgnoredUnleased = "unleased" // a leader or member record on no lease: not an agent's
	IgnoredInvalid  = "invalid"  // does not parse or validate
)

// NewProxy creates the proxy metrics and registers them on reg.
func NewProxy(reg prometheus.Registerer) *Proxy {
	m := &Proxy{
		Clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_proxy_clients", Help: "Authenticated client sessions currently open, by endpoint (what max_clients bounds).",
		}, []string{"endpoint"}),
		PendingClients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_proxy_pending_clients",
			Help: "Client connections not authenticated yet (TLS, startup packet, authentication), by endpoint (what max_pending_clients bounds).",
		}, []string{"endpoint"}),
		Sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_proxy_sessions_total", Help: "Client connections by endpoint and how their startup ended.",
		}, []string{"endpoint", "outcome"}),
		Terminated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_proxy_sessions_terminated_total", Help: "Established sessions the proxy cut, by reason.",
		}, []string{"reason"}),
		BackendConnect: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pharos_proxy_backend_connect_seconds",
			Help:    "Time to open a backend connection (TCP and TLS, before authentication).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"endpoint"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_proxy_bytes_total", Help: "Bytes relayed, by direction.",
		}, []string{"direction"}),
		Cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_proxy_cancel_requests_total", Help: "CancelRequests received, by result.",
		}, []string{"result"}),
		BackendUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_backend_up", Help: "1 when the backend passes health checks, else 0.",
		}, []string{"backend"}),
		BackendRole: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_backend_role", Help: "1 for the role the backend has now (primary, replica, unknown).",
		}, []string{"backend", "role"}),
		BackendLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_backend_lag_bytes", Help: "Replay lag of a replica behind the primary, in bytes.",
		}, []string{"backend"}),
		BackendSessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_backend_sessions", Help: "Sessions currently attached to the backend.",
		}, []string{"backend"}),
		HealthCheckError: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_backend_health_check_failures_total", Help: "Failed health checks, by backend.",
		}, []string{"backend"}),
		SplitBrain: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pharos_router_split_brain_total",
			Help: "Topology updates that showed more than one writable backend; rw is refused while it lasts.",
		}),
		RWAvailable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_router_rw_available", Help: "1 while the rw endpoint has a target.",
		}),
		ROBackends: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_router_ro_backends", Help: "Replicas the ro endpoint can use now.",
		}),
		TopologyChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pharos_router_topology_changes_total", Help: "Changes of the rw target or the ro set.",
		}),
		EtcdUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_proxy_etcd_up",
			Help: "1 while the etcd topology source reaches etcd; 0 means the proxy serves the last known topology.",
		}),
		LeaderEpoch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_router_leader_epoch",
			Help: "Leadership epoch (the leader key's create revision) of the topology in force; 0 without a leader.",
		}),
		RouteSwitch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pharos_router_route_switch_seconds",
			Help:    "Time from receiving an etcd change to the new rw route being in force.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		EtcdIgnored: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_router_etcd_records_ignored",
			Help: "Keys of the cluster's layout the etcd source ignores now, by reason: unleased (a leader or member record " +
				"not attached to a lease, so not written by an agent: forged or restored) or invalid (does not parse).",
		}, []string{"reason"}),
		Registered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_proxy_registered",
			Help: "1 while the proxy's record is in etcd (proxies/<name> on its lease, renewed); 0 while it retries, " +
				"when other proxies cannot pass cancel requests on to it.",
		}),
		CancelID: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pharos_proxy_cancel_id",
			Help: "The cancel ID the cancel keys this proxy issues carry (pid >> 22), unique among the cluster's live proxies while registered.",
		}),
		PoolClients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_proxy_pool_clients",
			Help: "Clients of pooled sessions, by endpoint and state: active (logged in, with or without a server connection) or waiting (for a server connection, at pool_size or max_db_connections).",
		}, []string{"endpoint", "state"}),
		PoolServers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pharos_proxy_pool_servers",
			Help: "Pooled server connections, by endpoint and state: active (used by a client, or logging in, being reset or checked) or idle (in the pool).",
		}, []string{"endpoint", "state"}),
		PoolWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pharos_proxy_pool_wait_seconds",
			Help:    "Time a client waited for a pooled server connection to be free (or allowed to open), every checkout counted; the dial and login are not included.",
			Buckets: []float64{.0001, .001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}),
		PoolServerConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pharos_proxy_pool_server_connections_total",
			Help: "Pooled server connection events, by endpoint and outcome: opened, reused, reset_failed, expired, check_failed, discarded, fenced.",
		}, []string{"endpoint", "outcome"}),
	}
	reg.MustRegister(m.Clients, m.PendingClients, m.Sessions, m.Terminated, m.BackendConnect, m.Bytes, m.Cancels,
		m.BackendUp, m.BackendRole, m.BackendLag, m.BackendSessions, m.HealthCheckError,
		m.SplitBrain, m.RWAvailable, m.ROBackends, m.TopologyChanges,
		m.PoolClients, m.PoolServers, m.PoolWait, m.PoolServerConns)
	return m
}

// RegisterEtcd adds the etcd-source metrics to reg. Only a proxy that
// follows etcd exports them, so that a static deployment does not show
// pharos_proxy_etcd_up 0 and trip an "etcd down" alert.
func (m *Proxy) RegisterEtcd(reg prometheus.Registerer) {
	reg.MustRegister(m.EtcdUp, m.LeaderEpoch, m.RouteSwitch, m.EtcdIgnored)
}

// RegisterRegistry adds the proxy registry's metrics to reg: only a proxy
// that registers itself (source pharos) exports them.
func (m *Proxy) RegisterRegistry(reg prometheus.Registerer) {
	reg.MustRegister(m.Registered, m.CancelID)
}

// NewRegistry returns a registry with the Go runtime and process collectors,
// the base every pharos daemon exports.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// RegisterBuildInfo adds pharos_build_info{version, goversion} 1 to reg: a
// rolling upgrade shows as the version label changing node by node.
func RegisterBuildInfo(reg prometheus.Registerer, component, version string) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pharos_build_info", Help: "Always 1; the labels say which pharos build this process runs.",
	}, []string{"component", "version", "goversion"})
	g.WithLabelValues(component, version, runtime.Version()).Set(1)
	reg.MustRegister(g)
}

// Handler serves reg in the Prometheus text format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
