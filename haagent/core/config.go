package core

import (
	"errors"
	"fmt"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// Timing defaults. The arithmetic behind them is in the package doc.
const (
	DefaultTTL          = 4 * time.Second
	DefaultLoopWait     = 1 * time.Second
	DefaultRetryTimeout = 1 * time.Second
	DefaultSafetyMargin = 1 * time.Second

	// DefaultMaximumLagOnFailover: a replica further behind the last
	// primary position it saw does not take the lead.
	DefaultMaximumLagOnFailover = 1 << 20
	// DefaultCrashRestartTimeout bounds how long a leader whose PostgreSQL
	// crashed keeps the key while restarting it in place.
	DefaultCrashRestartTimeout = 5 * time.Second
)

// Timing is the HA timing, validated together (Validate).
type Timing struct {
	// TTL is the lease of the leader key and member records. etcd leases
	// have whole seconds.
	TTL time.Duration
	// LoopWait is the period of the loop and of lease renewals when
	// nothing wakes the loop earlier.
	LoopWait time.Duration
	// RetryTimeout bounds one etcd call (a renewal, a read, a write).
	RetryTimeout time.Duration
	// SafetyMargin is how long before the lease can expire a leader that
	// could not renew must have stopped accepting writes.
	SafetyMargin time.Duration
}

// DefaultTiming is the timing used when a config leaves it out.
func DefaultTiming() Timing {
	return Timing{TTL: DefaultTTL, LoopWait: DefaultLoopWait, RetryTimeout: DefaultRetryTimeout, SafetyMargin: DefaultSafetyMargin}
}

// FenceAfter is how long a leader may go without a successful renewal
// before it demotes itself: ttl − safety_margin.
func (t Timing) FenceAfter() time.Duration { return t.TTL - t.SafetyMargin }

// StaleAfter is the age after which a member record no longer counts in an
// election: its agent publishes every loop, so two missed loops plus one
// slow call mean it is not keeping up.
func (t Timing) StaleAfter() time.Duration { return 2*t.LoopWait + t.RetryTimeout }

// Validate checks the values together and names the first one that breaks
// a rule, with the rule.
func (t Timing) Validate() error {
	switch {
	case t.TTL < 2*time.Second:
		return fmt.Errorf("ttl %v: must be at least 2s (etcd raises shorter leases to its minimum silently)", t.TTL)
	case t.TTL%time.Second != 0:
		return fmt.Errorf("ttl %v: etcd leases have whole seconds", t.TTL)
	case t.LoopWait <= 0:
		return fmt.Errorf("loop_wait %v: must be positive", t.LoopWait)
	case t.RetryTimeout <= 0:
		return fmt.Errorf("retry_timeout %v: must be positive", t.RetryTimeout)
	case t.SafetyMargin <= 0:
		return fmt.Errorf("safety_margin %v: must be positive (it is the time a fenced leader has to stop PostgreSQL)", t.SafetyMargin)
	case t.SafetyMargin >= t.TTL:
		return fmt.Errorf("safety_margin %v: must be below ttl %v", t.SafetyMargin, t.TTL)
	case 2*t.LoopWait+t.RetryTimeout > t.FenceAfter():
		return fmt.Errorf("loop_wait %v, retry_timeout %v, ttl %v, safety_margin %v: need 2·loop_wait + retry_timeout ≤ ttl − safety_margin, so that a leader can miss one renewal and retry before it must fence itself (%v > %v)",
			t.LoopWait, t.RetryTimeout, t.TTL, t.SafetyMargin, 2*t.LoopWait+t.RetryTimeout, t.FenceAfter())
	}
	return nil
}

// Rules are the settings Decide needs besides the observation.
type Rules struct {
	// Name is this member's name.
	Name   string
	Timing Timing
	Tags   cluster.Tags
	// MaximumLagOnFailover is in bytes behind the last primary position
	// this member saw; 0 disables the check.
	MaximumLagOnFailover int64
	// CrashRestartTimeout: a leader whose PostgreSQL crashed restarts it
	// in place for this long, then releases the key.
	CrashRestartTimeout time.Duration
	// AutoReinit lets a member whose pg_rewind failed wipe its data
	// directory and clone again.
	AutoReinit bool
	// WatchdogRequired: this member may not lead unless its watchdog is
	// armed (set by New from the watchdog mode).
	WatchdogRequired bool
}

// Validate checks the rules.
func (r Rules) Validate() error {
	if !cluster.ValidName(r.Name) {
		return fmt.Errorf("name %q: use letters, digits, '-', '_' and '.' (at most 128)", r.Name)
	}
	if len(r.Name) > maxSlotName {
		return fmt.Errorf("name %q: at most %d characters (it names the member's replication slot, which PostgreSQL would truncate)", r.Name, maxSlotName)
	}
	if err := r.Timing.Validate(); err != nil {
		return err
	}
	if r.MaximumLagOnFailover < 0 {
		return errors.New("maximum_lag_on_failover: must not be negative")
	}
	if r.CrashRestartTimeout <= 0 {
		return fmt.Errorf("crash_restart_timeout %v: must be positive", r.CrashRestartTimeout)
	}
	return nil
}

// WatchdogMode says whether leading needs a watchdog.
type WatchdogMode string

const (
	WatchdogOff       WatchdogMode = "off"       // never armed
	WatchdogAutomatic WatchdogMode = "automatic" // armed when it can be; leads without it otherwise
	WatchdogRequired  WatchdogMode = "required"  // no leadership unless armed
)

// ParseWatchdogMode checks a configured mode.
func ParseWatchdogMode(s string) (WatchdogMode, error) {
	switch m := WatchdogMode(s); m {
	case WatchdogOff, WatchdogAutomatic, WatchdogRequired:
		return m, nil
	}
	return "", fmt.Errorf("watchdog %q: one of off, automatic, required", s)
}
