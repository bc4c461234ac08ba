// Package watchdog owns the watchdog drivers that fence a primary whose
// agent hangs or dies: the Linux /dev/watchdog device (Device) and the
// software watchdog, a separate `pharos watchdog` process the agent feeds
// through a pipe (Software, RunSoftware).
//
// It must not know HA rules or etcd: when to arm, feed and disarm is the
// agent's decision (arm before promotion with timeout = ttl − safety_margin,
// feed only after a successful lease renewal, disarm on clean demotion).
//
// # Semantics shared by both drivers
//
// Arm starts the countdown (or, when armed, restarts it with a new
// timeout); Feed pushes the deadline to now + timeout; Disarm is the magic
// close, the only clean stop. If the agent dies or closes its end without
// the magic close, the watchdog keeps counting and fires at the deadline.
// After any error from Arm, Armed reports false: the agent must treat an
// error as "not protected" (mode `required` refuses leadership).
//
// # Software watchdog protocol
//
// The agent writes to the child's stdin, one byte per command:
//
//	'.'               feed: deadline = now + timeout
//	"T <duration>\n"  new timeout (a Go duration such as 3s), also a feed
//	'V'               magic close: when EOF follows, disarm and exit 0;
//	                  any other command after it cancels it, as with
//	                  /dev/watchdog
//	'\n', ' ', '\t', '\r' are ignored; any other byte is logged and ignored
//
// EOF without a preceding 'V' (the agent died) does not disarm: the child
// keeps counting and fires. The child reports readiness by writing the line
// "armed" (or "error: <why>") to the file descriptor named by --ready-fd.
//
// On a missed deadline the child SIGKILLs the postmaster named by the first
// line of <data-dir>/postmaster.pid (if that process runs in the data
// directory, so a stale pid file cannot kill a stranger), then every
// postgres process whose working directory is the data directory, logs
// "watchdog fired: postmaster <pid> killed" at ERROR with fired_at, and
// exits 1. SIGTERM, SIGINT and SIGHUP are ignored while armed (and logged):
// only the magic close disarms; SIGKILL of the watchdog process is the
// operator's deliberate way to remove it.
//
// The child runs in its own session so that it outlives the agent and a
// signal to the agent's process group. Its stdout and stderr are appended
// to <data-dir>/../watchdog.log.
package watchdog

import (
	"errors"
	"time"
)

// Watchdog is what the agent drives. Not safe for concurrent use unless
// stated.
type Watchdog interface {
	// Arm starts the watchdog, or re-arms it with a new timeout; it returns
	// the reason it cannot. After an error the watchdog is not armed.
	Arm(timeout time.Duration) error
	// Feed pushes the deadline to now + Timeout().
	Feed() error
	// Disarm is the clean stop (magic close); a no-op when not armed.
	Disarm() error
	// Armed reports whether a watchdog is counting.
	Armed() bool
	// Timeout is the effective timeout (a device rounds down to whole
	// seconds); 0 when not armed.
	Timeout() time.Duration
}

// ErrNotArmed is returned by Feed when there is nothing to feed.
var ErrNotArmed = errors.New("not armed")

var (
	_ Watchdog = (*Device)(nil)
	_ Watchdog = (*Software)(nil)
)
