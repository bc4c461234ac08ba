package restapi

import (
	"errors"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// check is one health check endpoint's rule.
type check int

const (
	checkPrimary       check = iota // holds the leader key and runs as a writable primary
	checkLeader                     // holds the leader key, whatever PostgreSQL does
	checkStandbyLeader              // leader of a standby cluster: pharos has none
	checkReplica                    // a running, load-balanced replica (lag, state, tag filters)
	checkReadOnly                   // checkPrimary or checkReplica
	checkHealth                     // PostgreSQL is running
	checkLiveness                   // the HA loop is alive
	checkReadiness                  // the leader, or a streaming replica close enough
)

// healthPaths are the health check endpoints, Patroni's names. Each
// answers GET (status code and a JSON document), HEAD and OPTIONS (status
// code only) alike.
var healthPaths = map[string]check{
	"/":               checkPrimary,
	"/primary":        checkPrimary,
	"/master":         checkPrimary, // Patroni before 4.0
	"/read-write":     checkPrimary,
	"/leader":         checkLeader,
	"/standby-leader": checkStandbyLeader,
	"/standby_leader": checkStandbyLeader,
	"/replica":        checkReplica,
	"/read-only":      checkReadOnly,
	"/health":         checkHealth,
	"/liveness":       checkLiveness,
	"/readiness":      checkReadiness,
}

// verdict is the outcome of a health check.
type verdict struct {
	ok bool
	// badLag is the unparsable value of ?lag=, which the check ignored
	// (as Patroni does); empty when lag was absent or parsed.
	badLag string
}

// evaluate applies check c to the node status st with the request's query
// q at time now. It is pure: everything it knows is in its arguments.
func evaluate(c check, st NodeStatus, q url.Values, now time.Time, loopStale time.Duration) verdict {
	maxLag, hasLag, badLag := lagLimit(q)
	v := verdict{badLag: badLag}
	primary := st.Leader && st.Running && st.Role == cluster.RolePrimary
	lagOK := !hasLag || (st.LagBytes >= 0 && st.LagBytes <= maxLag)
	switch c {
	case checkPrimary:
		v.ok = primary
	case checkLeader:
		v.ok = st.Leader
	case checkStandbyLeader:
		v.ok = false
	case checkReplica:
		v.ok = replicaOK(st, q, lagOK)
	case checkReadOnly:
		v.ok = primary || replicaOK(st, q, lagOK)
	case checkHealth:
		v.ok = st.Running
	case checkLiveness:
		v.ok = st.Paused || (!st.LoopAt.IsZero() && now.Sub(st.LoopAt) <= loopStale)
	case checkReadiness:
		v.ok = (st.Leader && st.Running) ||
			(st.Running && st.Role == cluster.RoleReplica && st.Streaming && lagOK)
	}
	// Patroni matches tag_<name>=<value> everywhere but on the leader
	// checks and the probes it serves apart (liveness, readiness).
	switch c {
	case checkReplica, checkReadOnly, checkHealth:
		if v.ok && !tagsMatch(st.Tags, q) {
			v.ok = false
		}
	}
	return v
}

// replicaOK is Patroni's replica rule: PostgreSQL running as a replica,
// not tagged noloadbalance, within ?lag= and in ?replication_state= when
// asked.
func replicaOK(st NodeStatus, q url.Values, lagOK bool) bool {
	if !st.Running || st.Role != cluster.RoleReplica || st.Tags.NoLoadBalance || !lagOK {
		return false
	}
	if want := q.Get("replication_state"); want != "" && want != replicationState(st) {
		return false
	}
	return true
}

// replicationState is Patroni's replication_state: "streaming" for a
// replica receiving WAL from the leader, empty otherwise.
func replicationState(st NodeStatus) string {
	if st.Running && st.Role == cluster.RoleReplica && st.Streaming {
		return "streaming"
	}
	return ""
}

// tagsMatch checks the tag_<name>=<value> query parameters against the
// node's tags. pharos knows three tags, each always defined (false or 0
// when not set); any other tag is undefined here and fails the check, as
// an undefined tag does in Patroni.
func tagsMatch(tags cluster.Tags, q url.Values) bool {
	for key, vals := range q {
		name, ok := strings.CutPrefix(key, "tag_")
		if !ok || len(vals) == 0 {
			continue
		}
		var have string
		switch name {
		case "nofailover":
			have = strconv.FormatBool(tags.NoFailover)
		case "noloadbalance":
			have = strconv.FormatBool(tags.NoLoadBalance)
		case "failover_priority":
			have = strconv.Itoa(tags.FailoverPriority)
		default:
			return false
		}
		if vals[0] != have {
			return false
		}
	}
	return true
}

// lagLimit reads ?lag=. hasLimit is false when lag is absent or cannot be
// parsed; bad is the unparsable value. Patroni treats an unparsable lag as
// no limit at all, so an existing load-balancer configuration with a typo
// keeps the meaning it had there.
func lagLimit(q url.Values) (limit int64, hasLimit bool, bad string) {
	vals, ok := q["lag"]
	if !ok || len(vals) == 0 {
		return 0, false, ""
	}
	n, err := ParseLag(vals[0])
	if err != nil {
		if vals[0] == "" {
			return 0, false, `""`
		}
		return 0, false, vals[0]
	}
	return n, true, ""
}

// lagUnits are PostgreSQL's memory units, which Patroni accepts in ?lag=
// (case sensitive, powers of 1024).
var lagUnits = map[string]float64{
	"":   1,
	"B":  1,
	"kB": 1 << 10,
	"MB": 1 << 20,
	"GB": 1 << 30,
	"TB": 1 << 40,
}

var errBadLag = errors.New("not a byte count: digits with an optional fraction and one of B, kB, MB, GB, TB")

// ParseLag parses a ?lag= value the way Patroni does: bytes as a number
// ("1048576") or with a unit ("1024kB", "1.5MB", "1 GB"), rounded to whole
// bytes. Negative values, other units and anything else are errors.
func ParseLag(s string) (int64, error) {
	s = strings.TrimSpace(s)
	end := 0
	for end < len(s) && s[end] >= '0' && s[end] <= '9' {
		end++
	}
	if end == 0 {
		return 0, errBadLag
	}
	if end < len(s) && s[end] == '.' {
		frac := end + 1
		for frac < len(s) && s[frac] >= '0' && s[frac] <= '9' {
			frac++
		}
		if frac == end+1 {
			return 0, errBadLag
		}
		end = frac
	}
	mult, ok := lagUnits[strings.TrimSpace(s[end:])]
	if !ok {
		return 0, errBadLag
	}
	num, err := strconv.ParseFloat(s[:end], 64)
	if err != nil {
		return 0, errBadLag
	}
	v := math.Round(num * mult)
	if v >= math.MaxInt64 {
		return 0, errBadLag
	}
	return int64(v), nil
}

// statusDoc is the JSON document of the GET health checks and /patroni:
// Patroni's field names where they mean the same thing, pharos's own under
// "pharos".
type statusDoc struct {
	// State is PostgreSQL's: "running", "starting" or "stopped".
	State            string        `json:"state"`
	Role             cluster.Role  `json:"role"`
	Timeline         int64         `json:"timeline,omitempty"`
	XLog             *xlogDoc      `json:"xlog,omitempty"`
	ReplicationState string        `json:"replication_state,omitempty"`
	Lag              *int64        `json:"lag,omitempty"` // replay lag in bytes, replicas only, when known
	Pause            bool          `json:"pause,omitempty"`
	PendingRestart   bool          `json:"pending_restart,omitempty"`
	Tags             *cluster.Tags `json:"tags,omitempty"`
	Pharos           pharosDoc     `json:"pharos"`
}

// xlogDoc is Patroni's "xlog": the WAL position as a byte number,
// "location" on a primary, "replayed_location" on a replica.
type xlogDoc struct {
	Location         *uint64 `json:"location,omitempty"`
	ReplayedLocation *uint64 `json:"replayed_location,omitempty"`
}

// pharosDoc is what Patroni's document has no field for.
type pharosDoc struct {
	Name   string      `json:"name"`
	State  string      `json:"state,omitempty"` // the agent's words, e.g. "streaming"
	Leader bool        `json:"leader"`
	Epoch  int64       `json:"epoch,omitempty"`
	LSN    cluster.LSN `json:"lsn"`
	LoopAt time.Time   `json:"loop_at,omitzero"`
}

func newStatusDoc(st NodeStatus) statusDoc {
	d := statusDoc{
		State:          postgresState(st),
		Role:           st.Role,
		Timeline:       st.Timeline,
		Pause:          st.Paused,
		PendingRestart: st.PendingRestart,
		Pharos: pharosDoc{
			Name:   st.Name,
			State:  st.State,
			Leader: st.Leader,
			Epoch:  st.Epoch,
			LSN:    st.LSN,
			LoopAt: st.LoopAt,
		},
		ReplicationState: replicationState(st),
	}
	if st.Running && st.LSN != 0 {
		lsn := uint64(st.LSN)
		switch st.Role {
		case cluster.RolePrimary:
			d.XLog = &xlogDoc{Location: &lsn}
		case cluster.RoleReplica:
			d.XLog = &xlogDoc{ReplayedLocation: &lsn}
		}
	}
	if st.Role == cluster.RoleReplica && st.LagBytes >= 0 {
		lag := st.LagBytes
		d.Lag = &lag
	}
	if st.Tags != (cluster.Tags{}) {
		tags := st.Tags
		d.Tags = &tags
	}
	return d
}

func postgresState(st NodeStatus) string {
	switch {
	case st.Running:
		return "running"
	case st.Role == cluster.RoleStarting:
		return "starting"
	default:
		return "stopped"
	}
}

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request, c check) {
	st := s.backend.Status()
	now := time.Now()
	v := evaluate(c, st, r.URL.Query(), now, s.cfg.LoopStale)
	if v.badLag != "" {
		s.warnBadLag(r, v.badLag, now)
	}
	code := http.StatusServiceUnavailable
	if v.ok {
		code = http.StatusOK
	}
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet {
		// HEAD and OPTIONS: the status code is the answer (what HAProxy's
		// option httpchk OPTIONS reads).
		if r.Method == http.MethodOptions {
			w.Header().Set("Content-Length", "0")
		}
		w.WriteHeader(code)
		return
	}
	writeJSON(w, r, code, newStatusDoc(st))
}

func (s *Server) warnBadLag(r *http.Request, lag string, now time.Time) {
	last := s.lastBadLagLog.Load()
	if now.UnixNano()-last < int64(badLagLogEvery) || !s.lastBadLagLog.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	s.log.Warn("health check ignores an unparsable lag limit, as Patroni does",
		"path", r.URL.Path, "lag", lag, "remote", r.RemoteAddr, "valid", "bytes, or a number with B, kB, MB, GB, TB")
}
