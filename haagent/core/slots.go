package core

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Replication slots are named after members (SlotName), and SlotName is not
// one-to-one: "node-1", "node.1", "node_1" and "Node_1" all map to
// "node_1". Two members sharing a slot would be silent trouble: the second
// standby cannot attach while the first streams, and a primary dropping the
// slot of one that left drops the other's, letting it recycle WAL the other
// still needs. So:
//
//   - an agent refuses to start (a NameConflictError, exit 2) when a member
//     record in etcd with another name maps to its slot: join reads the
//     members before taking a lease. A member whose record is gone (its
//     agent down past the lease) is not seen; when it comes back it is the
//     one refused, since the newcomer's record is there then;
//   - two agents starting within the same second can both pass that check.
//     The leader then creates the slot once, never drops a slot a present
//     member maps to, and fails its sync-slots step every round with an
//     error naming both members (pharos_agent_action_failures_total
//     {action="sync-slots"}), until one is renamed;
//   - a name longer than maxSlotName is refused by Rules.Validate: PostgreSQL
//     truncates longer slot names silently when creating a slot, so two
//     long names with a common prefix would share one.

// maxSlotName is PostgreSQL's limit on a slot name (NAMEDATALEN − 1), and
// on application_name, which synchronous_standby_names matches.
const maxSlotName = 63

// NameConflictError: this member's name maps to the replication slot of
// another member in etcd. The agent refuses to start with it.
type NameConflictError struct {
	Name  string // this member
	Other string // the member already in etcd
	Key   string // Other's member key
	Slot  string
}

func (e *NameConflictError) Error() string {
	return fmt.Sprintf("name %q: its replication slot %q is that of member %q (%s); member names must differ in more than case and '-', '.', '_'",
		e.Name, e.Slot, e.Other, e.Key)
}

// SlotConflict returns a member of others (not name itself) whose slot is
// name's, or "".
func SlotConflict(name string, others []string) string {
	sort.Strings(others)
	for _, o := range others {
		if o != name && SlotName(o) == SlotName(name) {
			return o
		}
	}
	return ""
}

// SlotPlan maps members to the slots to keep: want has one entry per slot
// (its first member by name), drop leaves out every slot a member of want
// maps to, and shared lists the slots more than one member maps to, with
// the members, for the error.
func SlotPlan(want, drop []string) (wantOut, dropOut []string, shared map[string][]string) {
	bySlot := map[string][]string{}
	for _, m := range want {
		s := SlotName(m)
		bySlot[s] = append(bySlot[s], m)
	}
	for s, ms := range bySlot {
		sort.Strings(ms)
		wantOut = append(wantOut, ms[0])
		if len(ms) > 1 {
			if shared == nil {
				shared = map[string][]string{}
			}
			shared[s] = ms
		}
	}
	sort.Strings(wantOut)
	for _, m := range drop {
		if _, kept := bySlot[SlotName(m)]; !kept {
			dropOut = append(dropOut, m)
		}
	}
	return wantOut, dropOut, shared
}

// SharedSlotsError describes shared (from SlotPlan), nil when empty.
func SharedSlotsError(shared map[string][]string) error {
	if len(shared) == 0 {
		return nil
	}
	slots := make([]string, 0, len(shared))
	for s := range shared {
		slots = append(slots, s)
	}
	slices.Sort(slots)
	parts := make([]string, len(slots))
	for i, s := range slots {
		parts[i] = fmt.Sprintf("members %s share replication slot %q", strings.Join(shared[s], ", "), s)
	}
	return fmt.Errorf("%s: only one of them can stream with it; rename all but one", strings.Join(parts, "; "))
}

// SlotName turns a member name into a replication slot name ([a-z0-9_]).
func SlotName(member string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(member) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}
