package bench

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Mode is the protocol a run's clients use.
type Mode string

const (
	// ModeSimple sends each query as one simple-protocol Query message with
	// parameters interpolated by the client (pgx QueryExecModeSimpleProtocol).
	ModeSimple Mode = "simple"
	// ModeExtended prepares each statement once per connection and then
	// sends Bind/Execute, like pgbench -M prepared (pgx
	// QueryExecModeCacheStatement).
	ModeExtended Mode = "extended"
)

func (m Mode) execMode() pgx.QueryExecMode {
	if m == ModeSimple {
		return pgx.QueryExecModeSimpleProtocol
	}
	return pgx.QueryExecModeCacheStatement
}

// ParseModes reads a mode selector: "simple", "extended" or "both" (simple,
// then extended).
func ParseModes(s string) ([]Mode, error) {
	switch s {
	case string(ModeSimple):
		return []Mode{ModeSimple}, nil
	case string(ModeExtended):
		return []Mode{ModeExtended}, nil
	case "both":
		return []Mode{ModeSimple, ModeExtended}, nil
	}
	return nil, fmt.Errorf("%q is not simple, extended or both", s)
}

// Target is one endpoint under test.
type Target struct {
	Name string
	DSN  string // any pgx connection string (URL or key=value)
}

// BaselineName is the target name that is the baseline for ratios
// wherever it appears; otherwise the first target is.
const BaselineName = "direct"

// ParseTarget reads "name=DSN". The name is the text before the first '='
// and may hold letters, digits, '_', '-' and '.'; the DSN must parse as a
// pgx connection string (nothing is dialled).
func ParseTarget(s string) (Target, error) {
	name, dsn, ok := strings.Cut(s, "=")
	if !ok || name == "" || dsn == "" {
		return Target{}, errors.New("want name=DSN")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
			// The "name" is not echoed: given a bare DSN by mistake, it
			// would be the DSN's start, password included.
			return Target{}, errors.New("want name=DSN, the name made of letters, digits, '_', '-' or '.'")
		}
	}
	if _, err := pgx.ParseConfig(dsn); err != nil {
		return Target{}, fmt.Errorf("%s: %w", name, err)
	}
	return Target{Name: name, DSN: dsn}, nil
}

// BaselineIndex returns the index of the target named BaselineName, or 0.
func BaselineIndex(targets []Target) int {
	for i, t := range targets {
		if t.Name == BaselineName {
			return i
		}
	}
	return 0
}

// Workload is what one client transaction does.
type Workload string

const (
	// WorkloadSelect is pgbench's select-only transaction (pgbench -S): one
	// primary-key lookup in pgbench_accounts, on a connection held for the
	// whole run.
	WorkloadSelect Workload = "select"
	// WorkloadWrite is pgbench's simple-update transaction (pgbench -N):
	// BEGIN, UPDATE pgbench_accounts, SELECT it back, INSERT into
	// pgbench_history, END — five round trips, on a held connection.
	WorkloadWrite Workload = "write"
	// WorkloadConnect opens a new connection for every transaction
	// (pgbench -C -S): startup, authentication, one select, Terminate. It
	// measures connection-setup rate, which is where a proxy that pools
	// server connections differs most from one that does not.
	WorkloadConnect Workload = "connect"
)

// ParseWorkloads reads a comma-separated list of workloads, e.g.
// "select,write,connect", keeping its order.
func ParseWorkloads(s string) ([]Workload, error) {
	var out []Workload
	for _, f := range strings.Split(s, ",") {
		w := Workload(strings.TrimSpace(f))
		switch w {
		case WorkloadSelect, WorkloadWrite, WorkloadConnect:
		default:
			return nil, fmt.Errorf("%q is not select, write or connect", f)
		}
		if slices.Contains(out, w) {
			return nil, fmt.Errorf("%q given twice", w)
		}
		out = append(out, w)
	}
	return out, nil
}

// MaxClients bounds one run's client count: each is a server connection
// (or two, through a proxy), and a local benchmark past this measures the
// machine's scheduler, not the endpoint.
const MaxClients = 1000

// ParseClients reads a comma-separated list of client counts, e.g.
// "1,16,64", keeping its order.
func ParseClients(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > MaxClients {
			return nil, fmt.Errorf("%q is not a client count between 1 and %d", f, MaxClients)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("%d given twice", n)
		}
		out = append(out, n)
	}
	return out, nil
}
