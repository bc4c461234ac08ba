package haagent

import (
	"fmt"
	"sync"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/watchdog"
)

// Watchdog is a driver the agent arms before it promotes and feeds after
// each acknowledged lease renewal.
type Watchdog = watchdog.Watchdog

// guard owns the watchdog for the agent: the loop arms and disarms, the
// renewal goroutine feeds.
type guard struct {
	mode core.WatchdogMode
	// timeout is ttl − safety_margin: a fed watchdog fires before the
	// lease can expire.
	timeout time.Duration

	mu sync.Mutex
	wd Watchdog // nil when mode is off
}

// arm arms the watchdog (a no-op when armed or off). In automatic mode a
// failure is returned too; the caller decides whether it blocks.
func (g *guard) arm() error {
	if g.mode == core.WatchdogOff || g.wd == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.wd.Armed() {
		return nil
	}
	if err := g.wd.Arm(g.timeout); err != nil {
		return err
	}
	if got := g.wd.Timeout(); got > g.timeout {
		_ = g.wd.Disarm()
		return fmt.Errorf("watchdog timeout %v is longer than ttl − safety_margin %v", got, g.timeout)
	}
	return nil
}

// ifArmed runs f on an armed watchdog, under the lock; nil otherwise.
func (g *guard) ifArmed(f func(Watchdog) error) error {
	if g.wd == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.wd.Armed() {
		return nil
	}
	return f(g.wd)
}

func (g *guard) feed() error   { return g.ifArmed(Watchdog.Feed) }
func (g *guard) disarm() error { return g.ifArmed(Watchdog.Disarm) }

func (g *guard) armed() bool {
	if g.wd == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.wd.Armed()
}
