// Package ctl owns the operator's view of a pharos cluster: it renders the
// state internal/clusterstate reads (one consistent read of the keys under
// /pharos/<cluster>/, DESIGN §3) as tables, one-line summaries or JSON for
// `pharos ctl` and the demo, and parses what an operator types that is not
// a cluster record (--at).
//
// It must not know the proxy or the agent's decision rules, and it reads
// and writes etcd only through clusterstate: it shows what the records say
// (who holds the leader key, what each member published) and reports
// records that could not be read instead of dropping them, but it never
// judges which member should lead or receive traffic.
package ctl

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// WriteConfig prints the configuration as sorted key = value lines.
func WriteConfig(w io.Writer, cfg map[string]any) error {
	var lines []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
				continue
			}
			b, _ := json.Marshal(v)
			lines = append(lines, prefix+k+" = "+string(b))
		}
	}
	walk("", cfg)
	sort.Strings(lines)
	if len(lines) == 0 {
		lines = []string{"(empty: every agent uses its local settings)"}
	}
	_, err := w.Write([]byte(strings.Join(lines, "\n") + "\n"))
	return err
}

// ParseSchedule reads --at: RFC 3339, or a duration from now ("+10m").
func ParseSchedule(s string, now time.Time) (time.Time, error) {
	if d, ok := strings.CutPrefix(s, "+"); ok {
		dur, err := time.ParseDuration(d)
		if err != nil {
			return time.Time{}, fmt.Errorf("%q: %w", s, err)
		}
		return now.Add(dur), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a time like 2026-11-22T03:00:00Z or +10m", s)
	}
	return t, nil
}
