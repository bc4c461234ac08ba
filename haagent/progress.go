package haagent

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// Long steps (bootstrap, clone, rewind) block the loop for as long as they
// last, and the loop is what rewrites the member record every round. This
// file keeps an operator informed meanwhile: the programs' progress reports
// become log lines at a bounded rate and a state in the member record
// ("creating replica 45%") that `pharos ctl list` and the demo show.

// copyProgress is one progress report of pg_basebackup or pg_rewind.
type copyProgress struct {
	DoneKB, TotalKB int64
	Percent         int
	// Tablespace of Tablespaces finished (pg_basebackup only; 0 of 0 for
	// pg_rewind).
	Tablespace, Tablespaces int
}

// progressRe matches what pg_basebackup --progress prints (PostgreSQL 15's
// progress_report, C locale), "  138/71937 kB (0%), 0/2 tablespaces",
// optionally followed by the file being copied with --verbose, and what
// pg_rewind --progress prints, "  1234/5678 kB (21%) copied". The done
// column is padded to the width of the total.
var progressRe = regexp.MustCompile(`^\s*(\d+)/(\d+) kB \((\d+)%\)(?:, (\d+)/(\d+) tablespaces?(?:\s.*)?| copied\s*)$`)

// parseCopyProgress reads a progress report; ok is false for any other
// line.
func parseCopyProgress(line string) (p copyProgress, ok bool) {
	m := progressRe.FindStringSubmatch(line)
	if m == nil {
		return copyProgress{}, false
	}
	var err error
	num := func(s string) int64 {
		if s == "" || err != nil {
			return 0
		}
		var n int64
		n, err = strconv.ParseInt(s, 10, 64)
		return n
	}
	p.DoneKB, p.TotalKB = num(m[1]), num(m[2])
	p.Percent = int(num(m[3]))
	p.Tablespace, p.Tablespaces = int(num(m[4])), int(num(m[5]))
	if err != nil || p.Percent > 100 || p.DoneKB > p.TotalKB {
		return copyProgress{}, false
	}
	return p, true
}

// maxLine bounds one line of a program's output: a longer one is cut
// there, so that garbage without a newline cannot grow without bound.
const maxLine = 4096

// lineWriter hands what a program writes to fn line by line, split at '\n'
// and at '\r' (pg_basebackup ends its progress reports with '\r' when
// stderr is a terminal), without the terminator. exec.Cmd calls Write from
// one goroutine at a time when Stdout and Stderr are the same writer.
type lineWriter struct {
	buf []byte
	fn  func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	for _, c := range p {
		if c == '\n' || c == '\r' {
			w.emit()
			continue
		}
		w.buf = append(w.buf, c)
		if len(w.buf) >= maxLine {
			w.emit()
		}
	}
	return len(p), nil
}

// flush hands on an unterminated last line.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.emit()
	}
}

func (w *lineWriter) emit() {
	line := string(w.buf)
	w.buf = w.buf[:0]
	if strings.TrimSpace(line) != "" {
		w.fn(line)
	}
}

// tailLines keeps the last max lines added.
type tailLines struct {
	max   int
	lines []string
}

func (t *tailLines) add(line string) {
	if len(t.lines) == t.max {
		t.lines = append(t.lines[:0], t.lines[1:]...)
	}
	t.lines = append(t.lines, line)
}

func (t *tailLines) String() string { return strings.Join(t.lines, " | ") }

// throttle bounds how often a repeated event is reported: at most once per
// every, and besides whenever a percentage enters a new step (0: time
// only), so a short copy still shows each step and a long one still shows
// that it moves.
type throttle struct {
	every    time.Duration
	step     int
	last     time.Time
	lastStep int
}

// due reports whether to report at now, and if so counts it as reported.
// The first event is due.
func (t *throttle) due(now time.Time, percent int) bool {
	if !t.last.IsZero() {
		timeUp := now.Sub(t.last) >= t.every
		stepUp := t.step > 0 && percent/t.step > t.lastStep
		if !timeUp && !stepUp {
			return false
		}
	}
	t.last = now
	if t.step > 0 {
		t.lastStep = percent / t.step
	}
	return true
}

// reset counts now as reported: the next event is due after every.
func (t *throttle) reset(now time.Time) {
	t.last, t.lastStep = now, 0
}

// copyMeter measures the rate of a copy from its first progress report
// (the time before it, the source's checkpoint, copies nothing).
type copyMeter struct {
	t0  time.Time
	kb0 int64
}

// observe returns the average rate since the first report, in kB/s, and
// the time left at that rate; ok is false until there is a rate.
func (m *copyMeter) observe(now time.Time, p copyProgress) (kbps float64, eta time.Duration, ok bool) {
	if m.t0.IsZero() {
		m.t0, m.kb0 = now, p.DoneKB
		return 0, 0, false
	}
	secs := now.Sub(m.t0).Seconds()
	if secs < 0.5 || p.DoneKB <= m.kb0 {
		return 0, 0, false
	}
	kbps = float64(p.DoneKB-m.kb0) / secs
	eta = time.Duration(float64(p.TotalKB-p.DoneKB) / kbps * float64(time.Second))
	return kbps, eta.Round(time.Second), true
}

func formatRate(kbps float64) string {
	if kbps >= 1024 {
		return strconv.FormatFloat(kbps/1024, 'f', 1, 64) + " MB/s"
	}
	return strconv.FormatFloat(kbps, 'f', 0, 64) + " kB/s"
}

// phase maps a line a program prints when it starts a step without
// progress reports to what the member record says meanwhile.
type phase struct{ contains, state string }

// copyReporter follows the output of one pg_basebackup or pg_rewind run.
// Its line method runs on exec's output goroutine; everything it touches
// besides the live record is its own.
type copyReporter struct {
	log    *slog.Logger
	now    func() time.Time
	prog   string // the program, the log message of its other lines
	msg    string // log message of progress reports, e.g. "clone progress"
	label  string // state prefix, e.g. "creating replica"
	live   *liveRecord
	phases []phase

	logAt throttle
	meter copyMeter
}

// Progress is logged every 10 % and at least every 5 s while it moves.
const (
	progressLogEvery = 5 * time.Second
	progressLogStep  = 10
)

func newCopyReporter(log *slog.Logger, now func() time.Time, prog, msg, label string, live *liveRecord) *copyReporter {
	return &copyReporter{log: log, now: now, prog: prog, msg: msg, label: label, live: live,
		logAt: throttle{every: progressLogEvery, step: progressLogStep}}
}

// line handles one line of the program's output and reports whether it was
// a progress report (the others belong in an error message).
func (r *copyReporter) line(l string) bool {
	now := r.now()
	if p, ok := parseCopyProgress(l); ok {
		kbps, eta, known := r.meter.observe(now, p)
		if r.logAt.due(now, p.Percent) {
			args := []any{"done_kb", p.DoneKB, "total_kb", p.TotalKB, "percent", p.Percent}
			if p.Tablespaces > 1 {
				args = append(args, "tablespaces", fmt.Sprintf("%d/%d", p.Tablespace, p.Tablespaces))
			}
			if known {
				args = append(args, "rate", formatRate(kbps), "eta", eta.String())
			}
			r.log.Info(r.msg, args...)
		}
		r.live.set(fmt.Sprintf("%s %d%%", r.label, p.Percent))
		return true
	}
	text := strings.TrimSpace(l)
	if rest, ok := strings.CutPrefix(text, r.prog+": "); ok {
		text = rest // the message names the program already
	}
	// Few, and they say what the progress reports do not: the source's
	// checkpoint, how much a rewind must copy, an error.
	r.log.Info(r.prog, "output", text)
	for _, ph := range r.phases {
		if strings.Contains(l, ph.contains) {
			r.live.set(r.label + ": " + ph.state)
		}
	}
	return false
}

// liveInterval bounds how often a long step rewrites the member record.
const liveInterval = time.Second

// liveRecord republishes this member's record while one long step blocks
// the loop: only when the state changed, at most once per liveInterval,
// from one goroutine that the step owns and stops before it returns, so
// that the round after the step writes last. A nil *liveRecord ignores
// set and stop.
type liveRecord struct {
	a     *Agent
	base  cluster.Member
	stopc chan struct{}
	done  chan struct{}

	mu    sync.Mutex
	state string // guarded by mu
}

// startLive publishes base at once and starts following its state.
func (a *Agent) startLive(ctx context.Context, base cluster.Member) *liveRecord {
	l := &liveRecord{a: a, base: base, state: base.State, stopc: make(chan struct{}), done: make(chan struct{})}
	l.publish(ctx, base.State)
	go l.run(ctx)
	return l
}

// set changes the state the record shows from the next publication on.
func (l *liveRecord) set(state string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.state = state
	l.mu.Unlock()
}

// stop ends the publications and waits for the last one to finish.
func (l *liveRecord) stop() {
	if l == nil {
		return
	}
	close(l.stopc)
	<-l.done
}

func (l *liveRecord) run(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(liveInterval)
	defer t.Stop()
	published := l.base.State
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.stopc:
			return
		case <-t.C:
		}
		l.mu.Lock()
		s := l.state
		l.mu.Unlock()
		if s != published {
			l.publish(ctx, s)
			published = s
		}
	}
}

func (l *liveRecord) publish(ctx context.Context, state string) {
	a, m := l.a, l.base
	m.State, m.UpdatedAt = state, a.now().UTC()
	// The REST API shows the step too; LoopAt stays: no round completed.
	if st := a.status.Load(); st != nil {
		cp := *st
		cp.Role, cp.State = m.Role, m.State
		a.status.Store(&cp)
	}
	a.putRecord(ctx, m)
}
