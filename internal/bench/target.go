package bench

import (
	"errors"
	"fmt"
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
