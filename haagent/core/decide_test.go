package core

import (
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

var rewriteScenarios = flag.Bool("rewrite", false,
	"rewrite the expected plans in testdata/*.txt from what Decide returns; only commit the changes if you understand what caused them")

// TestDecideScenarios runs the stories in testdata/*.txt. A file is a
// sequence of cases separated by blank lines:
//
//	# What happens, for an operator.
//	rules name=n2 ttl=4s max_lag=1MB [auto_reinit] [nofailover] [priority=1]
//	observe now=100s [watchdog_armed] [detail]
//	  dcs initialized sysid=42 leader=n1 [epoch=5] [mine] [paused] [unreachable]
//	  member n1 role=primary timeline=1 lsn=0/3000000 [receive=…] seen=99.5s rev=10 [nofailover] [priority=1]
//	  lease held|lost [renewed=99.2s]
//	  pg data|empty running|stopped [recovery] [standby] [sysid=42] [timeline=1] [lsn=…] [receive=…] [upstream=n1]
//	  memory [crashed_at=…] [rewind_failed=n1 rewind_failure=wal_missing] [last_leader_lsn=…] [leader_gone_rev=9] [leader_gone_at=…] [behind_since=…]
//	  request reinitialize
//	result rewind failed [class=unknown] [watchdog_failed] [at=101s]
//	observe now=102s
//	  pg data stopped sysid=42 timeline=1
//	----
//	Plan.String()
//	memory: what Memory.Apply(result) left
//	memory: what Memory.Apply(observation) left
//	Plan.String()
//
// A rules line holds for the next cases of the file too; a case of rules
// alone prints the thresholds derived from them.
//
// A case is a story of rounds. Its first observe states what the member
// remembers from before (its memory line); every observe is applied to
// the memory with Memory.Apply before Decide sees it, as the driver does.
// Each result line is what a step of the last plan did (its kind must be
// in that plan; "restart" is the operator's restart), applied with
// Memory.Apply. Each later observe takes the previous one's lines it does
// not repeat (a dcs, lease or pg line replaces that line, member lines
// replace all members), and may not state memory. The memory after each
// result and each later observe is printed before that round's plan. An
// observe with detail also prints, under its plan, the data of each
// action that Plan.String leaves out (cause, rev).
// Times are offsets from an arbitrary epoch ("-" is the zero time), sizes
// take kB, MB or GB (1024-based, like PostgreSQL). Omitted rules take the
// package defaults. Any unknown word fails the case, so that a typo cannot
// make it vacuous. Every plan is also checked against checkPlanInvariants.
func TestDecideScenarios(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario files in testdata (%v)", err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) { runScenarioFile(t, path) })
	}
}

type scenarioLine struct {
	n    int
	text string
}

func runScenarioFile(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	var out []string
	var rules *Rules
	var pending []scenarioLine
	cases := 0
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		trimmed := strings.TrimSpace(line)
		switch {
		case line == "----":
			end := i + 1
			for end < len(lines) && lines[end] != "" {
				end++
			}
			want := strings.Join(lines[i+1:end], "\n")
			pos := fmt.Sprintf("%s:%d", path, i+1)
			if len(pending) > 0 {
				pos = fmt.Sprintf("%s:%d", path, pending[0].n)
			}
			got, err := runScenario(pending, &rules)
			cases++
			switch {
			case err != nil:
				var le *lineError
				if errors.As(err, &le) {
					pos, err = fmt.Sprintf("%s:%d", path, le.n), le.err
				}
				t.Errorf("%s: %v", pos, err)
				got = want
			case *rewriteScenarios:
			case got != want:
				t.Errorf("%s: output differs (accept with -rewrite once understood)\n got: %s\nwant: %s", pos, got, want)
			}
			out = append(out, line)
			if got != "" {
				out = append(out, strings.Split(got, "\n")...)
			}
			pending = nil
			i = end - 1
			continue
		case trimmed == "":
			if len(pending) > 0 {
				t.Fatalf("%s:%d: blank line inside the case started at line %d: missing ----", path, i+1, pending[0].n)
			}
		case strings.HasPrefix(trimmed, "#"):
		default:
			pending = append(pending, scenarioLine{n: i + 1, text: line})
		}
		out = append(out, line)
	}
	if len(pending) > 0 {
		t.Fatalf("%s:%d: case without ---- at the end of the file", path, pending[0].n)
	}
	if cases == 0 {
		t.Fatalf("%s: no cases", path)
	}
	if *rewriteScenarios {
		if updated := strings.Join(out, "\n"); updated != string(data) {
			if err := os.WriteFile(path, []byte(updated), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// runScenario applies the case's commands and returns Decide's plans, with
// the memory between them.
func runScenario(lines []scenarioLine, rules **Rules) (string, error) {
	var obs *Observation
	var last Plan
	var mem Memory
	var out []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimLeft(l.text, " \t") != l.text {
			return "", atLine(l.n, fmt.Errorf("indented line outside observe: %q", l.text))
		}
		word, rest, _ := strings.Cut(l.text, " ")
		var err error
		switch word {
		case "rules":
			if obs != nil {
				return "", atLine(l.n, errors.New("rules after an observe: start a new case"))
			}
			var r Rules
			r, err = parseRules(newArgs(rest))
			*rules = &r
		case "observe":
			var sub []scenarioLine
			for i+1 < len(lines) && strings.TrimLeft(lines[i+1].text, " \t") != lines[i+1].text {
				i++
				sub = append(sub, lines[i])
			}
			if *rules == nil {
				return "", atLine(l.n, errors.New("observe before any rules"))
			}
			var o Observation
			oa := newArgs(rest)
			detail := oa.flag("detail")
			if o, err = parseObservation(oa, sub, **rules, obs); err != nil {
				break
			}
			if obs == nil {
				mem = o.Memory
			}
			mem.Apply(o)
			o.Memory = mem
			if obs != nil {
				out = append(out, "memory: "+formatMemory(mem))
			}
			if last, err = decideChecked(o, **rules); err != nil {
				break
			}
			out = append(out, last.String())
			if detail {
				out = append(out, actionDetails(last)...)
			}
			obs = &o
		case "result":
			if obs == nil {
				return "", atLine(l.n, errors.New("result before any observe"))
			}
			var r Result
			if r, err = parseResult(newArgs(rest), *obs, last); err != nil {
				break
			}
			mem.Apply(r)
			out = append(out, "memory: "+formatMemory(mem))
		default:
			err = fmt.Errorf("unknown command %q (want rules, observe or result)", word)
		}
		if err != nil {
			return "", atLine(l.n, err)
		}
	}
	if obs == nil {
		if *rules == nil {
			return "", errors.New("case without rules or observe")
		}
		return describeRules(**rules), nil
	}
	return strings.Join(out, "\n"), nil
}

// decideChecked is Decide, checked for determinism and the invariants.
func decideChecked(o Observation, r Rules) (Plan, error) {
	p := Decide(o, r)
	if again := Decide(o, r); again.String() != p.String() {
		return p, fmt.Errorf("Decide is not deterministic: %q then %q", p, again)
	}
	if err := checkPlanInvariants(o, p); err != nil {
		return p, fmt.Errorf("plan %q: %w", p, err)
	}
	return p, nil
}

// actionDetails are the data of p's actions that Plan.String leaves out,
// one indented line per action that has any.
func actionDetails(p Plan) []string {
	var out []string
	for _, a := range p.Actions {
		var f []string
		if a.Cause != "" {
			f = append(f, "cause="+strconv.Quote(a.Cause))
		}
		if a.Rev != 0 {
			f = append(f, "rev="+strconv.FormatInt(a.Rev, 10))
		}
		if len(f) > 0 {
			out = append(out, "  "+a.Kind.String()+": "+strings.Join(f, " "))
		}
	}
	return out
}

// parseResult reads what a step of the last plan did: the first action of
// the named kind in p, or the operator's restart.
func parseResult(a *args, o Observation, p Plan) (Result, error) {
	r := Result{At: o.Now, ConfigRev: o.DCS.ConfigRev}
	kind := ""
	for _, k := range a.keys {
		kind = k
		break
	}
	if kind == "" {
		return r, errors.New("result needs an action kind")
	}
	a.m[kind].used = true
	if kind == "restart" {
		r.Request = RequestRestart
	} else {
		i := slices.IndexFunc(p.Actions, func(x Action) bool { return x.Kind.String() == kind })
		if i < 0 {
			return r, fmt.Errorf("result %s: the last plan (%s) has no such step", kind, p)
		}
		r.Action = p.Actions[i]
	}
	r.OK = a.choice("ok", "failed") == "ok"
	if v, ok := a.get("class"); ok {
		r.Rewind = RewindFailure(v)
		if r.OK || r.Action.Kind != ActRewind {
			a.fail(errors.New("class=CLASS belongs to a failed rewind"))
		}
	}
	r.WatchdogFailed = a.flag("watchdog_failed")
	a.at("at", &r.At, false)
	return r, a.done()
}

// formatMemory prints m as a memory line would state it ("empty" for the
// zero Memory).
func formatMemory(m Memory) string {
	var f []string
	at := func(k string, t time.Time) {
		if !t.IsZero() {
			f = append(f, k+"="+strconv.FormatFloat(t.Sub(time.Unix(0, 0)).Seconds(), 'f', -1, 64)+"s")
		}
	}
	num := func(k string, n int64) {
		if n != 0 {
			f = append(f, k+"="+strconv.FormatInt(n, 10))
		}
	}
	at("crashed_at", m.CrashedAt)
	if m.RewindFailed != "" {
		f = append(f, "rewind_failed="+m.RewindFailed, "rewind_failure="+string(m.RewindFailure))
	}
	num("rewind_unknown", int64(m.RewindUnknown))
	if m.RewindNeeded {
		f = append(f, "rewind_needed")
	}
	if m.LastLeaderLSN != 0 {
		f = append(f, "last_leader_lsn="+m.LastLeaderLSN.String())
	}
	num("leader_gone_rev", m.LeaderGoneRev)
	at("leader_gone_at", m.LeaderGoneAt)
	at("behind_since", m.BehindSince)
	at("watchdog_failed_at", m.WatchdogFailedAt)
	num("applied_config_rev", m.AppliedConfigRev)
	if m.Promotion != "" {
		f = append(f, "promotion="+strings.ReplaceAll(m.Promotion, " ", "_"))
	}
	if len(f) == 0 {
		return "empty"
	}
	return strings.Join(f, " ")
}

// describeRules is the output of a case with rules only: the thresholds
// Decide derives from them, so that the stories below can be checked
// against them by eye.
func describeRules(r Rules) string {
	t := r.Timing
	s := fmt.Sprintf("%s: fence after %v, peers stale after %v, wait for peers %v, timeline switch wait %v, crash restart %v, max lag %d bytes",
		r.Name, t.FenceAfter(), t.StaleAfter(), electionWait(t), timelineSwitchWait(t), r.CrashRestartTimeout, r.MaximumLagOnFailover)
	if r.AutoReinit {
		s += ", auto_reinit"
	}
	if r.Tags.NoFailover {
		s += ", nofailover"
	}
	if r.Tags.FailoverPriority != 0 {
		s += fmt.Sprintf(", failover_priority %d", r.Tags.FailoverPriority)
	}
	if r.WatchdogRequired {
		s += ", watchdog required"
	}
	return s
}

// checkPlanInvariants holds for every plan, whatever the scenario: only the
// holder of the leader key (or a member that acquires it earlier in the
// same plan) makes its server a primary, a key is only acquired when nobody
// holds it, and no plan both demotes and promotes.
func checkPlanInvariants(o Observation, p Plan) error {
	hasKey := o.DCS.LeaderIsMine
	demotes, promotes := false, false
	for _, a := range p.Actions {
		switch a.Kind {
		case ActAcquireLeader:
			if o.DCS.Leader != "" {
				return fmt.Errorf("acquires the leader key held by %s", o.DCS.Leader)
			}
			hasKey = true
		case ActReleaseLeader:
			hasKey = false
		case ActStartPrimary, ActPromote:
			if !hasKey {
				return fmt.Errorf("%s without holding the leader key", a.Kind)
			}
			promotes = true
		case ActDemote:
			demotes = true
		}
	}
	if demotes && promotes {
		return errors.New("both demotes and makes a primary")
	}
	return nil
}

func parseRules(a *args) (Rules, error) {
	r := Rules{
		Timing:               DefaultTiming(),
		MaximumLagOnFailover: DefaultMaximumLagOnFailover,
		CrashRestartTimeout:  DefaultCrashRestartTimeout,
	}
	r.Name = a.str("name")
	a.dur("ttl", &r.Timing.TTL)
	a.dur("loop_wait", &r.Timing.LoopWait)
	a.dur("retry_timeout", &r.Timing.RetryTimeout)
	a.dur("safety_margin", &r.Timing.SafetyMargin)
	a.dur("crash_restart_timeout", &r.CrashRestartTimeout)
	a.size("max_lag", &r.MaximumLagOnFailover)
	r.AutoReinit = a.flag("auto_reinit")
	r.Tags.NoFailover = a.flag("nofailover")
	a.int("priority", &r.Tags.FailoverPriority)
	if v, ok := a.get("watchdog"); ok {
		mode, err := ParseWatchdogMode(v)
		a.fail(err)
		r.WatchdogRequired = mode == WatchdogRequired
	}
	if err := a.done(); err != nil {
		return r, err
	}
	return r, r.Validate()
}

// parseObservation reads an observe command; prev is the case's previous
// observation (nil in its first round), whose lines this one inherits.
func parseObservation(a *args, sub []scenarioLine, r Rules, prev *Observation) (Observation, error) {
	newMembers := func(o *Observation) {
		o.DCS.Members, o.DCS.MemberRev, o.DCS.MemberSeenAt = map[string]cluster.Member{}, map[string]int64{}, map[string]time.Time{}
	}
	var o Observation
	newMembers(&o)
	if prev != nil {
		o.DCS, o.Lease, o.PG = prev.DCS, prev.Lease, prev.PG
		o.DCS.Members, o.DCS.MemberRev, o.DCS.MemberSeenAt = maps.Clone(prev.DCS.Members), maps.Clone(prev.DCS.MemberRev), maps.Clone(prev.DCS.MemberSeenAt)
	}
	a.at("now", &o.Now, true)
	o.WatchdogArmed = a.flag("watchdog_armed")
	if err := a.done(); err != nil {
		return o, err
	}
	seen := map[string]bool{}
	for _, l := range sub {
		word, rest, _ := strings.Cut(strings.TrimSpace(l.text), " ")
		a := newArgs(rest)
		if word != "member" && seen[word] {
			return o, atLine(l.n, fmt.Errorf("%s given twice", word))
		}
		if !seen[word] {
			// A line replaces what the previous round said.
			switch word {
			case "dcs":
				o.DCS = DCSView{Members: o.DCS.Members, MemberRev: o.DCS.MemberRev, MemberSeenAt: o.DCS.MemberSeenAt}
			case "member":
				newMembers(&o)
			case "lease":
				o.Lease = LeaseView{}
			case "pg":
				o.PG = PGView{}
			case "memory":
				if prev != nil {
					return o, atLine(l.n, errors.New("memory: only the first round states it; later rounds get it from Memory.Apply"))
				}
			}
		}
		seen[word] = true
		switch word {
		case "dcs":
			d := &o.DCS
			d.Reachable = !a.flag("unreachable")
			d.Initialized = a.choice("initialized", "uninitialized") == "initialized"
			d.SystemID = a.str("sysid")
			if d.Leader = a.str("leader"); d.Leader == "-" {
				d.Leader = ""
			}
			a.int64("epoch", &d.LeaderEpoch)
			d.LeaderIsMine = a.flag("mine")
			d.Paused = a.flag("paused")
			a.int64("config_rev", &d.ConfigRev)
			a.int64("rev", &d.Revision)
			a.int64("leader_deleted_rev", &d.LeaderDeletedRev)
			d.SyncMode.Enabled = a.flag("sync_mode")
			d.SyncMode.Strict = a.flag("strict")
			d.SyncMode.Count = 1
			a.int("sync_count", &d.SyncMode.Count)
			if v, ok := a.get("sync"); ok {
				leader, list, _ := strings.Cut(v, ":")
				st := &cluster.SyncState{Leader: leader}
				if list != "" {
					st.Standbys = strings.Split(list, ",")
				}
				d.Sync = st
			}
			if cand, ok := a.get("switchover"); ok {
				sw := &cluster.Switchover{Handover: a.flag("handover"), Failover: a.flag("forced")}
				if cand != "-" {
					sw.Candidate = cand
				}
				var at time.Time
				a.at("scheduled", &at, false)
				if !at.IsZero() {
					sw.ScheduledAt = &at
				}
				a.at("switchover_seen", &d.SwitchoverSeenAt, false)
				a.int64("switchover_rev", &d.SwitchoverRev)
				d.Switchover = sw
			}
			if d.LeaderIsMine && d.Leader != r.Name {
				a.fail(fmt.Errorf("mine: the leader key is %q, not this member's (%s)", d.Leader, r.Name))
			}
		case "member":
			name, rest, _ := strings.Cut(rest, " ")
			if !cluster.ValidName(name) || strings.Contains(name, "=") {
				return o, atLine(l.n, fmt.Errorf("member needs a name first, got %q", name))
			}
			if _, dup := o.DCS.Members[name]; dup {
				return o, atLine(l.n, fmt.Errorf("member %s given twice", name))
			}
			a = newArgs(rest)
			m := cluster.Member{Name: name, Role: cluster.Role(a.str("role"))}
			if !slices.Contains([]cluster.Role{cluster.RolePrimary, cluster.RoleReplica, cluster.RoleStarting, cluster.RoleDemoted, cluster.RoleStopped}, m.Role) {
				a.fail(fmt.Errorf("role %q: want primary, replica, starting, demoted or stopped", m.Role))
			}
			a.int64("timeline", &m.Timeline)
			a.lsn("lsn", &m.LSN)
			a.lsn("receive", &m.ReceiveLSN)
			m.Tags.NoFailover = a.flag("nofailover")
			a.int("priority", &m.Tags.FailoverPriority)
			if up, ok := a.get("streaming"); ok {
				m.State, m.Upstream, m.Streaming = "streaming from "+up, up, true
			}
			if _, ok := a.m["lag"]; ok {
				var lag int64
				a.size("lag", &lag)
				m.LagBytes = &lag
			}
			var at time.Time
			var rev int64
			a.at("seen", &at, true)
			a.int64("rev", &rev)
			if _, ok := a.m["rev"]; !ok {
				a.fail(errors.New("rev= is required"))
			}
			o.DCS.Members[name], o.DCS.MemberRev[name], o.DCS.MemberSeenAt[name] = m, rev, at
		case "lease":
			o.Lease.Held = a.choice("held", "lost") == "held"
			a.at("renewed", &o.Lease.LastRenewed, false)
		case "pg":
			p := &o.PG
			if a.choice("data", "empty") == "data" {
				p.Data = DataPresent
			}
			p.Running = a.choice("running", "stopped") == "running"
			p.InRecovery = a.flag("recovery")
			p.Standby = a.flag("standby")
			p.SystemID = a.str("sysid")
			a.int64("timeline", &p.Timeline)
			a.lsn("lsn", &p.LSN)
			a.lsn("receive", &p.ReceiveLSN)
			p.Upstream = a.str("upstream")
			p.Streaming = a.flag("streaming")
			if v, ok := a.get("sync_names"); ok {
				p.SyncNames = strings.Split(v, ",")
			}
			if p.InRecovery && !p.Running {
				a.fail(errors.New("recovery: only a running server is in recovery"))
			}
			if p.Data == DataMissing && (p.Running || p.Standby || p.SystemID != "") {
				a.fail(errors.New("empty: an empty data directory has no server, standby.signal or system id"))
			}
		case "request":
			if a.flag("reinitialize") {
				o.Request = RequestReinitialize
			}
			if o.Request == RequestNone {
				a.fail(errors.New("request: want reinitialize"))
			}
		case "memory":
			m := &o.Memory
			a.at("crashed_at", &m.CrashedAt, false)
			m.RewindFailed = a.str("rewind_failed")
			m.RewindFailure = RewindFailure(a.str("rewind_failure"))
			if (m.RewindFailed == "") != (m.RewindFailure == "") || m.RewindFailure != "" && !m.RewindFailure.Permanent() {
				a.fail(errors.New("rewind_failed=M needs rewind_failure=CLASS, one a retry cannot fix (the agent remembers no other)"))
			}
			a.lsn("last_leader_lsn", &m.LastLeaderLSN)
			a.int64("leader_gone_rev", &m.LeaderGoneRev)
			a.at("leader_gone_at", &m.LeaderGoneAt, false)
			a.at("behind_since", &m.BehindSince, false)
			a.at("watchdog_failed_at", &m.WatchdogFailedAt, false)
			m.RewindNeeded = a.flag("rewind_needed")
			a.int64("applied_config_rev", &m.AppliedConfigRev)
			a.int("rewind_unknown", &m.RewindUnknown)
			m.Promotion = strings.ReplaceAll(a.str("promotion"), "_", " ")
		default:
			return o, atLine(l.n, fmt.Errorf("unknown observation %q (want dcs, member, lease, pg, memory or request)", word))
		}
		if err := a.done(); err != nil {
			return o, atLine(l.n, fmt.Errorf("%s: %w", word, err))
		}
	}
	for _, need := range []string{"dcs", "lease", "pg"} {
		if !seen[need] && prev == nil {
			return o, fmt.Errorf("observe needs a %s line", need)
		}
	}
	return o, nil
}

// lineError places an error on a line of the scenario file.
type lineError struct {
	n   int
	err error
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %v", e.n, e.err) }
func (e *lineError) Unwrap() error { return e.err }

// atLine places err on line n unless it is placed already.
func atLine(n int, err error) error {
	if _, ok := err.(*lineError); ok {
		return err
	}
	return &lineError{n: n, err: err}
}

// args are the words of one line: key=value pairs and bare flags. Every
// word must be consumed by a getter before done, or done fails; the first
// error sticks.
type args struct {
	m    map[string]*arg
	keys []string
	err  error
}

type arg struct {
	val    string
	hasVal bool
	used   bool
}

func newArgs(s string) *args {
	a := &args{m: map[string]*arg{}}
	for _, f := range strings.Fields(s) {
		k, v, hasVal := strings.Cut(f, "=")
		if _, dup := a.m[k]; dup {
			a.fail(fmt.Errorf("%s given twice", k))
		}
		a.m[k] = &arg{val: v, hasVal: hasVal}
		a.keys = append(a.keys, k)
	}
	return a
}

func (a *args) fail(err error) {
	if a.err == nil {
		a.err = err
	}
}

// get returns the value of key=value, or ok false when key is absent.
func (a *args) get(key string) (string, bool) {
	x, ok := a.m[key]
	if !ok {
		return "", false
	}
	x.used = true
	if !x.hasVal || x.val == "" {
		a.fail(fmt.Errorf("%s needs a value (%s=…)", key, key))
	}
	return x.val, true
}

func (a *args) flag(key string) bool {
	x, ok := a.m[key]
	if !ok {
		return false
	}
	x.used = true
	if x.hasVal {
		a.fail(fmt.Errorf("%s is a flag and takes no value", key))
	}
	return true
}

// choice requires exactly one of two flags and returns it.
func (a *args) choice(yes, no string) string {
	y, n := a.flag(yes), a.flag(no)
	if y == n {
		a.fail(fmt.Errorf("want exactly one of %s and %s", yes, no))
	}
	if y {
		return yes
	}
	return no
}

func (a *args) str(key string) string { v, _ := a.get(key); return v }

func (a *args) dur(key string, dst *time.Duration) {
	if v, ok := a.get(key); ok {
		d, err := time.ParseDuration(v)
		a.fail(err)
		*dst = d
	}
}

// at reads a time as an offset from the scenario epoch; "-" is the zero
// time.
func (a *args) at(key string, dst *time.Time, required bool) {
	v, ok := a.get(key)
	switch {
	case !ok && required:
		a.fail(fmt.Errorf("%s= is required", key))
	case ok && v == "-":
		*dst = time.Time{}
	case ok:
		var d time.Duration
		a.dur(key, &d)
		*dst = time.Unix(0, 0).Add(d)
	}
}

func (a *args) int64(key string, dst *int64) {
	if v, ok := a.get(key); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		a.fail(err)
		*dst = n
	}
}

func (a *args) int(key string, dst *int) {
	n := int64(*dst)
	a.int64(key, &n)
	*dst = int(n)
}

func (a *args) lsn(key string, dst *cluster.LSN) {
	if v, ok := a.get(key); ok {
		l, err := cluster.ParseLSN(v)
		a.fail(err)
		*dst = l
	}
}

// size reads bytes with an optional kB, MB or GB suffix (1024-based).
func (a *args) size(key string, dst *int64) {
	v, ok := a.get(key)
	if !ok {
		return
	}
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}} {
		if n, cut := strings.CutSuffix(v, u.suffix); cut {
			v, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	a.fail(err)
	*dst = n * mult
}

// done fails on the first error or on a word no getter asked for.
func (a *args) done() error {
	if a.err != nil {
		return a.err
	}
	for _, k := range a.keys {
		if !a.m[k].used {
			return fmt.Errorf("unknown word %q", k)
		}
	}
	return nil
}

func TestTimingValidate(t *testing.T) {
	def := DefaultTiming()
	with := func(f func(*Timing)) Timing { t := def; f(&t); return t }
	for _, tc := range []struct {
		name   string
		timing Timing
		key    string // the key the error must start with; "" for no error
	}{
		{"defaults are valid", def, ""},
		{"ttl not whole seconds", with(func(t *Timing) { t.TTL = 4500 * time.Millisecond }), "ttl"},
		{"ttl below 2s", with(func(t *Timing) { t.TTL = time.Second; t.SafetyMargin = 500 * time.Millisecond }), "ttl"},
		{"safety_margin equal to ttl", with(func(t *Timing) { t.SafetyMargin = t.TTL }), "safety_margin"},
		{"safety_margin above ttl", with(func(t *Timing) { t.SafetyMargin = 5 * time.Second }), "safety_margin"},
		{"safety_margin not positive", with(func(t *Timing) { t.SafetyMargin = 0 }), "safety_margin"},
		{"loop_wait not positive", with(func(t *Timing) { t.LoopWait = 0 }), "loop_wait"},
		{"retry_timeout not positive", with(func(t *Timing) { t.RetryTimeout = -time.Second }), "retry_timeout"},
		{"two loops and a retry exceed ttl minus safety_margin", with(func(t *Timing) { t.LoopWait = 2 * time.Second }), "loop_wait"},
		{"two loops and a retry exactly ttl minus safety_margin", with(func(t *Timing) { t.TTL = 5 * time.Second; t.LoopWait = 1500 * time.Millisecond }), ""},
		{"longer ttl leaves room for slower loops", Timing{TTL: 30 * time.Second, LoopWait: 10 * time.Second, RetryTimeout: 5 * time.Second, SafetyMargin: 5 * time.Second}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.timing.Validate()
			switch {
			case tc.key == "" && err != nil:
				t.Fatalf("Validate(%+v) = %v, want nil", tc.timing, err)
			case tc.key == "":
			case err == nil:
				t.Fatalf("Validate(%+v) = nil, want an error naming %s", tc.timing, tc.key)
			case !strings.HasPrefix(err.Error(), tc.key+" "):
				t.Fatalf("Validate(%+v) = %q, want it to start with the key %q", tc.timing, err, tc.key)
			}
		})
	}
}

// TestScenarioParserRejects: a typo or an impossible observation must fail
// the case, never be ignored.
func TestScenarioParserRejects(t *testing.T) {
	const obs = "observe now=100s\n  dcs initialized sysid=42 leader=-\n  lease held renewed=99s\n"
	for _, tc := range []struct {
		name, text, want string
	}{
		{"unknown command", "rule name=n2\n", `unknown command "rule"`},
		{"unknown rules word", "rules name=n2 tll=4s\n", `unknown word "tll"`},
		{"invalid timing", "rules name=n2 ttl=1s\n", "ttl 1s"},
		{"observe before rules", obs + "  pg data running\n", "observe before any rules"},
		{"unknown observation", "rules name=n2\n" + obs + "  pq data running\n", `unknown observation "pq"`},
		{"unknown pg word", "rules name=n2\n" + obs + "  pg data running recovry\n", `unknown word "recovry"`},
		{"flag with a value", "rules name=n2\n" + obs + "  pg data running=yes\n", "running is a flag"},
		{"value missing", "rules name=n2\n" + obs + "  pg data running upstream\n", "upstream needs a value"},
		{"neither running nor stopped", "rules name=n2\n" + obs + "  pg data\n", "exactly one of running and stopped"},
		{"recovery while stopped", "rules name=n2\n" + obs + "  pg data stopped recovery\n", "only a running server"},
		{"missing pg line", "rules name=n2\n" + obs, "needs a pg line"},
		{"line given twice", "rules name=n2\n" + obs + "  pg data stopped\n  lease lost\n", "lease given twice"},
		{"member without rev", "rules name=n2\n" + obs + "  pg data stopped\n  member n1 role=primary seen=99s\n", "rev= is required"},
		{"member with a bad role", "rules name=n2\n" + obs + "  pg data stopped\n  member n1 role=leader seen=99s rev=3\n", `role "leader"`},
		{"mine on another's key", "rules name=n2\nobserve now=1s\n  dcs initialized leader=n1 mine\n  lease held\n  pg data stopped\n", "not this member's"},
		{"bad LSN", "rules name=n2\n" + obs + "  pg data stopped lsn=3000000\n", "not of the form"},
		{"memory in a later round", "rules name=n2\n" + obs + "  pg data stopped\n" + obs + "  memory rewind_needed\n", "only the first round"},
		{"result before observe", "rules name=n2\nresult stop ok\n", "result before any observe"},
		{"result not in the plan", "rules name=n2\n" + obs + "  pg data stopped\nresult rewind failed\n", "has no such step"},
		{"result neither ok nor failed", "rules name=n2\n" + obs + "  pg data stopped\nresult start-replica\n", "exactly one of ok and failed"},
		{"rewind class on a success", "rules name=n2\n" + obs + "  pg data stopped\nresult restart ok class=unknown\n", "belongs to a failed rewind"},
		{"rules after observe", "rules name=n2\n" + obs + "  pg data stopped\nrules name=n3\n", "rules after an observe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var lines []scenarioLine
			for i, l := range strings.Split(strings.TrimSuffix(tc.text, "\n"), "\n") {
				lines = append(lines, scenarioLine{n: i + 1, text: l})
			}
			var rules *Rules
			got, err := runScenario(lines, &rules)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("runScenario = %q, %v; want an error containing %q", got, err, tc.want)
			}
		})
	}
}

// TestPlanInvariants: the check run on every scenario catches the plans it
// is there for.
func TestPlanInvariants(t *testing.T) {
	mine := Observation{DCS: DCSView{Reachable: true, Leader: "n2", LeaderIsMine: true}}
	none := Observation{DCS: DCSView{Reachable: true}}
	other := Observation{DCS: DCSView{Reachable: true, Leader: "n1"}}
	for _, tc := range []struct {
		name string
		o    Observation
		p    Plan
		ok   bool
	}{
		{"promote with the key", mine, plan("", act(ActPromote), act(ActRecordHistory)), true},
		{"acquire then promote", none, plan("", act(ActAcquireLeader), act(ActPromote)), true},
		{"start-primary with the key", mine, plan("", act(ActStartPrimary)), true},
		{"promote without the key", none, plan("", act(ActPromote)), false},
		{"start-primary without the key", other, plan("", act(ActStartPrimary)), false},
		{"promote before acquiring", none, plan("", act(ActPromote), act(ActAcquireLeader)), false},
		{"promote after releasing", mine, plan("", act(ActReleaseLeader), act(ActPromote)), false},
		{"acquire a held key", other, plan("", act(ActAcquireLeader)), false},
		{"demote and promote", mine, plan("", act(ActDemote), act(ActPromote)), false},
		{"demote and release", mine, plan("", act(ActDemote), act(ActReleaseLeader)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkPlanInvariants(tc.o, tc.p); (err == nil) != tc.ok {
				t.Fatalf("checkPlanInvariants(%v) = %v, want ok=%v", tc.p, err, tc.ok)
			}
		})
	}
}
