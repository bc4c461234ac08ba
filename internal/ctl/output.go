package ctl

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
)

// WriteTable writes the status for a human: one row per member, a line
// naming the leader, then anything an operator should look at (a primary
// without the leader key, unreadable records).
func WriteTable(w io.Writer, s clusterstate.ClusterStatus) error {
	if s.Empty() {
		_, err := fmt.Fprintf(w, "nothing under %s: no member has joined this cluster (is the cluster name right?)\n", s.Prefix)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tHOST:PORT\tROLE\tSTATE\tTL\tLAG\tLEADER\tTAGS")
	for _, m := range s.Members {
		leader := "-"
		if s.Leader != nil && s.Leader.Name == m.Name {
			leader = "* epoch " + strconv.FormatInt(s.Leader.Epoch, 10)
		}
		tl := "-"
		if m.Timeline > 0 {
			tl = strconv.FormatInt(m.Timeline, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			m.Name, m.Addr(), m.Role, dash(m.State), tl, lag(m), leader, dash(tags(m.Tags)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var b strings.Builder
	switch l := s.Leader; {
	case l == nil:
		b.WriteString("no leader\n")
	case !l.HasRecord:
		fmt.Fprintf(&b, "leader %s (epoch %d), which has no member record\n", l.Name, l.Epoch)
	default:
		fmt.Fprintf(&b, "leader %s (epoch %d)", l.Name, l.Epoch)
		if m, _ := s.Member(l.Name); m.Role != cluster.RolePrimary {
			fmt.Fprintf(&b, ", whose record says %s", m.Role)
		}
		b.WriteString("\n")
	}
	for _, m := range s.Members {
		if m.Role == cluster.RolePrimary && (s.Leader == nil || s.Leader.Name != m.Name) {
			fmt.Fprintf(&b, "warning: %s says primary but does not hold the leader key\n", m.Name)
		}
	}
	if s.Dynamic.SyncMode {
		mode := "synchronous mode"
		if s.Dynamic.SyncStrict {
			mode += " (strict)"
		}
		switch {
		case s.Sync == nil:
			fmt.Fprintf(&b, "%s: no synchronous standby recorded yet\n", mode)
		case len(s.Sync.Standbys) == 0:
			fmt.Fprintf(&b, "%s: no synchronous standby (leader %s)\n", mode, s.Sync.Leader)
		default:
			fmt.Fprintf(&b, "%s: %s wait(s) for %s\n", mode, s.Sync.Leader, strings.Join(s.Sync.Standbys, ", "))
		}
	}
	if s.Paused() {
		b.WriteString("PAUSED: no automatic failover or demotion (pharos ctl resume)\n")
	}
	for _, m := range s.Members {
		if m.PendingRestart {
			fmt.Fprintf(&b, "%s: a changed parameter waits for a restart\n", m.Name)
		}
	}
	if sw := s.Switchover; sw != nil {
		b.WriteString(sw.Describe() + "\n")
	}
	if in := s.Initialize; in != nil {
		id := in.SystemID
		if id == "" {
			id = "not yet known"
		}
		fmt.Fprintf(&b, "bootstrapped by %s, system identifier %s\n", in.By, id)
	}
	if len(s.Invalid) > 0 {
		b.WriteString("invalid records:\n")
		for _, r := range s.Invalid {
			fmt.Fprintf(&b, "  %s (mod revision %d): %s\n", r.Key, r.ModRevision, r.Error)
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	return writeProxies(w, s.Proxies)
}

// writeProxies lists the live proxies under the members, after a blank
// line; nothing when there is none.
func writeProxies(w io.Writer, ps []cluster.Proxy) error {
	if len(ps) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PROXY\tRW\tRO\tMETRICS\tVERSION\tSTARTED\tCANCEL ID")
	for _, p := range ps {
		id := "-"
		if p.CancelID != 0 {
			id = strconv.Itoa(int(p.CancelID))
		}
		started := "-"
		if !p.StartedAt.IsZero() {
			started = p.StartedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, dash(p.Listeners.RW), dash(p.Listeners.RO),
			dash(p.Listeners.Metrics), dash(p.Version), started, id)
	}
	return tw.Flush()
}

// Summary is the cluster on one line, for a human watching it change (the
// demo while the cluster forms): each member's role and state in name
// order, e.g. "n1 primary running · n2 creating replica 62% · n3 waiting:
// leader n1 is not a running primary yet". Members named in expect that
// have no valid record are listed as such rather than left out, so that a
// member that has not published yet does not look absent.
func Summary(s clusterstate.ClusterStatus, expect ...string) string {
	names := slices.Clone(expect)
	for _, m := range s.Members {
		if !slices.Contains(names, m.Name) {
			names = append(names, m.Name)
		}
	}
	slices.Sort(names)
	parts := make([]string, 0, len(names))
	for _, name := range names {
		m, ok := s.Member(name)
		if !ok {
			parts = append(parts, name+" (no record yet)")
			continue
		}
		// A starting member's state says what it does; the role would
		// only repeat that it is not routable yet.
		what := string(m.Role) + " " + m.State
		switch {
		case m.State == "":
			what = string(m.Role)
		case m.Role == cluster.RoleStarting || m.State == string(m.Role):
			what = m.State
		}
		parts = append(parts, name+" "+what)
	}
	return strings.Join(parts, " · ")
}

// WriteJSON writes the status as indented JSON.
func WriteJSON(w io.Writer, s clusterstate.ClusterStatus) error {
	return writeJSON(w, s)
}

// WriteHistoryTable writes the timeline history for a human, oldest first.
func WriteHistoryTable(w io.Writer, h cluster.History) error {
	if len(h) == 0 {
		_, err := io.WriteString(w, "no history: no member has promoted yet\n")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "TL\tLSN\tREASON\tTIME\tNEW LEADER\tOLD LEADER")
	for _, e := range h {
		t := "-"
		if !e.Time.IsZero() {
			t = e.Time.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Timeline, e.LSN, dash(e.Reason), t, dash(e.NewLeader), dash(e.OldLeader))
	}
	return tw.Flush()
}

// WriteHistoryJSON writes the history as an indented JSON array, as the
// history key holds it; an empty history is [].
func WriteHistoryJSON(w io.Writer, h cluster.History) error {
	if h == nil {
		h = cluster.History{}
	}
	return writeJSON(w, h)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// lag is the member's replay lag for humans.
func lag(m cluster.Member) string {
	n := m.Lag()
	if n < 0 {
		return "unknown"
	}
	return humanBytes(n)
}

// humanBytes writes a byte count with a binary unit, as the config files
// accept them: "0 B", "512 B", "1.5 kB", "12 MB". Values below 10 units keep
// one decimal.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	v := float64(n)
	suffix := ""
	for _, s := range []string{"kB", "MB", "GB", "TB", "PB", "EB"} {
		v /= unit
		suffix = s
		if v < unit {
			break
		}
	}
	if v < 10 {
		out := strconv.FormatFloat(v, 'f', 1, 64)
		return strings.TrimSuffix(out, ".0") + " " + suffix
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + " " + suffix
}

func tags(t cluster.Tags) string {
	var out []string
	if t.NoFailover {
		out = append(out, "nofailover")
	}
	if t.NoLoadBalance {
		out = append(out, "noloadbalance")
	}
	if t.FailoverPriority != 0 {
		out = append(out, "failover_priority="+strconv.Itoa(t.FailoverPriority))
	}
	return strings.Join(out, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
