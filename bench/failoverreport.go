package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// FailoverReport is the outcome of RunFailover. The embedded CheckResult
// holds the counts, the outage and recovery figures and the lost writes.
type FailoverReport struct {
	Table   string
	FirstID int64 // this run wrote ids FirstID..LastID
	LastID  int64
	Started time.Time // the first write
	Ended   time.Time // the end of the last write

	// FaultTook is how long the fault ran, from CheckResult.FaultAt (zero
	// if the run ended first), FaultErr its error, if any.
	FaultTook time.Duration
	FaultErr  string
	// Settled: the run stopped before After because writes had been
	// acknowledged for Settle after the fault returned.
	Settled bool
	// Checked: the read-back succeeded, so Lost, Present and the other
	// read-back figures are meaningful.
	Checked bool

	CheckResult
}

// WriteText writes a human summary of the run.
func (r *FailoverReport) WriteText(w io.Writer) error {
	var b strings.Builder
	at := func(t time.Time) string { // seconds into the run
		return fmt.Sprintf("%.3fs", t.Sub(r.Started).Seconds())
	}
	stop := "run time over"
	if r.Settled {
		stop = "writes settled"
	}
	fmt.Fprintf(&b, "failover probe: table %s, ids %d..%d, %d writes in %.3fs (%s)\n",
		r.Table, r.FirstID, r.LastID, r.Writes, r.Ended.Sub(r.Started).Seconds(), stop)
	switch {
	case r.FaultAt.IsZero():
		b.WriteString("fault:       never started (the run ended first)\n")
	default:
		fmt.Fprintf(&b, "fault:       began at %s, ran %s ms", at(r.FaultAt), formatMs(r.FaultTook))
		if r.FaultErr != "" {
			fmt.Fprintf(&b, ", FAILED: %s", r.FaultErr)
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "writes:      %d acknowledged, %d failed, %d unknown outcome", r.Acked, r.Failed, r.Unknown)
	if r.Checked && r.Unknown > 0 {
		fmt.Fprintf(&b, " (%d of them committed)", r.UnknownCommitted)
	}
	b.WriteByte('\n')
	if len(r.Errors) > 0 {
		var parts []string
		for _, c := range r.errorClasses() {
			parts = append(parts, fmt.Sprintf("%s %d", c, r.Errors[c]))
		}
		fmt.Fprintf(&b, "errors:      %s\n", strings.Join(parts, ", "))
	}
	if r.MaxOutage > 0 {
		fmt.Fprintf(&b, "max outage:  %s ms without an acknowledged write, %s to %s", formatMs(r.MaxOutage), at(r.OutageStart), at(r.OutageEnd))
		if r.OutageOpen {
			b.WriteString(" (the end of the run: writes never recovered)")
		}
		b.WriteByte('\n')
	}
	if !r.FaultAt.IsZero() {
		switch {
		case r.FirstFailureAt.IsZero():
			b.WriteString("recovery:    no write failed after the fault\n")
		case r.RecoveredAt.IsZero():
			fmt.Fprintf(&b, "recovery:    NONE: writes failed from %s and never succeeded again\n", at(r.FirstFailureAt))
		default:
			fmt.Fprintf(&b, "recovery:    %s ms after the fault (first failure at %s, next acknowledgement at %s)\n",
				formatMs(r.RecoveredAfter), at(r.FirstFailureAt), at(r.RecoveredAt))
		}
		switch {
		case !r.NewPrimaryAt.IsZero():
			fmt.Fprintf(&b, "new primary: %s, first acknowledgement %s ms after the fault (before: %s)\n",
				r.NewPrimary, formatMs(r.NewPrimaryAfter), nodeName(r.NodeBefore))
		default:
			fmt.Fprintf(&b, "primary:     %s before the fault, %s after\n", nodeName(r.NodeBefore), nodeName(r.NodeAfter))
		}
	}
	switch {
	case !r.Checked:
		b.WriteString("read-back:   FAILED, acknowledged writes not checked\n")
	case len(r.Lost) == 0:
		fmt.Fprintf(&b, "read-back:   %d rows; all %d acknowledged writes present\n", r.Present, r.Acked)
	default:
		fmt.Fprintf(&b, "read-back:   %d rows; LOST %d of %d acknowledged writes: %s\n", r.Present, len(r.Lost), r.Acked, idList(r.Lost))
	}
	if len(r.FailedCommitted) > 0 {
		fmt.Fprintf(&b, "note:        %d writes reported failed were committed anyway: %s\n", len(r.FailedCommitted), idList(r.FailedCommitted))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func nodeName(n string) string {
	if n == "" {
		return "(unknown)"
	}
	return n
}

// idList formats at most 20 ids.
func idList(ids []int64) string {
	const most = 20
	var b strings.Builder
	for i, id := range ids {
		if i == most {
			fmt.Fprintf(&b, " … and %d more", len(ids)-most)
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprint(&b, id)
	}
	return b.String()
}

type jsonFailover struct {
	Table            string         `json:"table"`
	FirstID          int64          `json:"first_id"`
	LastID           int64          `json:"last_id"`
	Started          time.Time      `json:"started"`
	Ended            time.Time      `json:"ended"`
	Settled          bool           `json:"settled"`
	FaultAt          *time.Time     `json:"fault_at,omitempty"`
	FaultMs          float64        `json:"fault_ms"`
	FaultErr         string         `json:"fault_error,omitempty"`
	Writes           int            `json:"writes"`
	Acked            int            `json:"acked"`
	Failed           int            `json:"failed"`
	Unknown          int            `json:"unknown"`
	Errors           map[string]int `json:"errors"`
	MaxOutageMs      float64        `json:"max_outage_ms"`
	OutageStart      *time.Time     `json:"outage_start,omitempty"`
	OutageEnd        *time.Time     `json:"outage_end,omitempty"`
	OutageOpen       bool           `json:"outage_open"`
	RecoveredAfterMs *float64       `json:"recovered_after_ms"`   // null: no failure after the fault, or no recovery
	NewPrimaryMs     *float64       `json:"new_primary_after_ms"` // null: the node did not change
	NewPrimary       string         `json:"new_primary,omitempty"`
	NodeBefore       string         `json:"node_before"`
	NodeAfter        string         `json:"node_after"`
	Checked          bool           `json:"checked"`
	Present          int            `json:"present"`
	UnknownCommitted int            `json:"unknown_committed"`
	Lost             []int64        `json:"lost"`
	FailedCommitted  []int64        `json:"failed_committed"`
	Timeline         *jsonTimeline  `json:"timeline,omitempty"` // absent without a fault
}

type jsonTimeline struct {
	BucketMs float64         `json:"bucket_ms"`
	Points   []jsonTimePoint `json:"points"`
}

// jsonTimePoint is one bucket; t_ms is where it starts, relative to the
// fault.
type jsonTimePoint struct {
	TMs     float64 `json:"t_ms"`
	Acked   int     `json:"acked"`
	Failed  int     `json:"failed"`
	Unknown int     `json:"unknown"`
}

// MarshalJSON renders the report with durations in milliseconds, absent
// times as omitted fields and the recovery figures as null when they did
// not happen.
func (r *FailoverReport) MarshalJSON() ([]byte, error) {
	opt := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	since := func(t time.Time, d time.Duration) *float64 {
		if t.IsZero() {
			return nil
		}
		v := ms(d)
		return &v
	}
	out := jsonFailover{
		Table: r.Table, FirstID: r.FirstID, LastID: r.LastID,
		Started: r.Started, Ended: r.Ended, Settled: r.Settled,
		FaultAt: opt(r.FaultAt), FaultMs: ms(r.FaultTook), FaultErr: r.FaultErr,
		Writes: r.Writes, Acked: r.Acked, Failed: r.Failed, Unknown: r.Unknown, Errors: r.Errors,
		MaxOutageMs: ms(r.MaxOutage), OutageStart: opt(r.OutageStart), OutageEnd: opt(r.OutageEnd), OutageOpen: r.OutageOpen,
		RecoveredAfterMs: since(r.RecoveredAt, r.RecoveredAfter),
		NewPrimaryMs:     since(r.NewPrimaryAt, r.NewPrimaryAfter),
		NewPrimary:       r.NewPrimary,
		NodeBefore:       r.NodeBefore, NodeAfter: r.NodeAfter,
		Checked: r.Checked, Present: r.Present, UnknownCommitted: r.UnknownCommitted,
		Lost: r.Lost, FailedCommitted: r.FailedCommitted,
	}
	if out.Errors == nil {
		out.Errors = map[string]int{}
	}
	if out.Lost == nil {
		out.Lost = []int64{}
	}
	if out.FailedCommitted == nil {
		out.FailedCommitted = []int64{}
	}
	if r.Timeline != nil {
		out.Timeline = &jsonTimeline{BucketMs: ms(TimelineBucket), Points: make([]jsonTimePoint, len(r.Timeline))}
		for i, p := range r.Timeline {
			out.Timeline.Points[i] = jsonTimePoint{TMs: ms(p.Offset), Acked: p.Acked, Failed: p.Failed, Unknown: p.Unknown}
		}
	}
	return json.Marshal(out)
}

// WriteJSON writes the report as one indented JSON document.
func (r *FailoverReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
