package core

import (
	"errors"
	"strings"
)

// RewindFailure classifies why a pg_rewind did not finish, so that the
// agent wipes and re-clones a data directory only when rewinding it again
// cannot work. Wiping a 2 TB node costs hours of degraded redundancy and a
// full copy over the network; a retry costs a loop round.
type RewindFailure string

// Failures a later attempt may get past: nothing in the target was
// changed, and the cause is outside it.
const (
	// RewindServerRunning: a server of the target data directory was
	// still alive, or its lock file made single-user recovery refuse.
	RewindServerRunning RewindFailure = "server_running"
	// RewindSourceUnavailable: the source did not answer, refused the
	// connection or broke it before the copy began.
	RewindSourceUnavailable RewindFailure = "source_unavailable"
	// RewindSourceBusy: the source answered but could not serve (starting
	// up, shutting down, out of connection slots, still in recovery).
	RewindSourceBusy RewindFailure = "source_busy"
	// RewindInterrupted: pg_rewind was killed (agent stopping, stalled)
	// before it began to copy.
	RewindInterrupted RewindFailure = "interrupted"
	// RewindUnknown: nothing recognisable; retried a few times
	// (RewindUnknownLimit) before it counts as RewindUnclassified.
	RewindUnknown RewindFailure = "unknown"
)

// Failures no retry fixes: only a fresh copy brings the member back. These
// are the closed set of reasons of pharos_agent_reclones_total.
const (
	// RewindNoCommonAncestor: the timelines share no history.
	RewindNoCommonAncestor RewindFailure = "no_common_ancestor"
	// RewindWALMissing: WAL the rewind needs to find the divergence (in the
	// target's pg_wal) is gone or unreadable.
	RewindWALMissing RewindFailure = "wal_missing"
	// RewindIncompatible: different systems, versions, or a target without
	// checksums or wal_log_hints.
	RewindIncompatible RewindFailure = "incompatible"
	// RewindTargetCorrupt: the target's control file or timeline history
	// is invalid.
	RewindTargetCorrupt RewindFailure = "target_corrupt"
	// RewindTargetModified: pg_rewind failed after it began to copy
	// ("point of no return" in its source): the target now mixes blocks
	// of both timelines and its own WAL may be overwritten, so a second
	// rewind would miss blocks the first changed.
	RewindTargetModified RewindFailure = "target_modified"
	// RewindUnclassified: an unrecognised failure that repeated
	// RewindUnknownLimit times in a row.
	RewindUnclassified RewindFailure = "unclassified"
)

// ReinitializeRequested is the reclone reason of an operator's
// POST /reinitialize: no rewind was tried.
const ReinitializeRequested = "reinitialize"

// RecloneReasons are every label value of pharos_agent_reclones_total.
var RecloneReasons = []string{
	string(RewindNoCommonAncestor), string(RewindWALMissing), string(RewindIncompatible),
	string(RewindTargetCorrupt), string(RewindTargetModified), string(RewindUnclassified),
	ReinitializeRequested,
}

// RewindUnknownLimit is how many unrecognised failures in a row count as
// one a retry cannot fix.
const RewindUnknownLimit = 3

// Permanent reports whether a retry cannot fix the failure.
func (f RewindFailure) Permanent() bool {
	switch f {
	case RewindNoCommonAncestor, RewindWALMissing, RewindIncompatible, RewindTargetCorrupt,
		RewindTargetModified, RewindUnclassified:
		return true
	}
	return false
}

// RewindCopyMarker is what pg_rewind --progress prints right before its
// point of no return.
const RewindCopyMarker = "need to copy "

// rewindPatterns are matched against pg_rewind's and libpq's own messages
// (PostgreSQL 13–17 wording), in order: the first match wins, so the
// specific causes come before the generic connection ones that a
// permanent failure's output can also carry.
var rewindPatterns = []struct {
	contains string
	class    RewindFailure
}{
	{"could not find common ancestor", RewindNoCommonAncestor},
	{"source and target clusters are from different systems", RewindIncompatible},
	{"clusters are not compatible with this version", RewindIncompatible},
	{"needs to use either data checksums or", RewindIncompatible},
	{"could not find previous WAL record", RewindWALMissing},
	{"could not read WAL record", RewindWALMissing},
	{"restore_command is not set in the target cluster", RewindWALMissing},
	{"invalid control file", RewindTargetCorrupt},
	{"unexpected control file", RewindTargetCorrupt},
	{"invalid data in history file", RewindTargetCorrupt},
	{"lock file \"postmaster.pid\" already exists", RewindServerRunning},
	{"is another postmaster", RewindServerRunning},
	{"target server must be shut down cleanly", RewindServerRunning},
	{"the database system is starting up", RewindSourceBusy},
	{"the database system is shutting down", RewindSourceBusy},
	{"the database system is in recovery mode", RewindSourceBusy},
	{"the database system is not yet accepting connections", RewindSourceBusy},
	{"too many clients already", RewindSourceBusy},
	{"remaining connection slots are reserved", RewindSourceBusy},
	{"must not be in recovery", RewindSourceBusy},
	{"could not connect to", RewindSourceUnavailable},
	{"connection to server", RewindSourceUnavailable},
	{"server closed the connection unexpectedly", RewindSourceUnavailable},
	{"could not receive data from server", RewindSourceUnavailable},
	{"could not send data to server", RewindSourceUnavailable},
	{"error running query", RewindSourceUnavailable},
	{"could not fetch file list", RewindSourceUnavailable},
	{"no connection to the server", RewindSourceUnavailable},
}

// ClassifyRewind names the failure of a pg_rewind run from what it printed
// (lines, newest last, and the error, which quotes the last of them).
// copied says whether it had passed its point of no return; killed whether
// the process was stopped from outside (context ended, stalled).
func ClassifyRewind(lines []string, err error, copied, killed bool) RewindFailure {
	if errors.Is(err, ErrSourceUnavailable) {
		// The pre-rewind checkpoint on the source failed: pg_rewind never
		// ran.
		return RewindSourceUnavailable
	}
	if copied {
		return RewindTargetModified
	}
	text := strings.Join(lines, "\n")
	if err != nil {
		text += "\n" + err.Error()
	}
	// Hints come capitalised ("Is another postmaster…"), errors not.
	text = strings.ToLower(text)
	for _, p := range rewindPatterns {
		if strings.Contains(text, strings.ToLower(p.contains)) {
			return p.class
		}
	}
	if killed {
		return RewindInterrupted
	}
	return RewindUnknown
}

// ErrSourceUnavailable: the server to rewind or clone from did not answer;
// nothing was changed here, and the failure says nothing about whether a
// rewind would work.
var ErrSourceUnavailable = errors.New("source unavailable")
