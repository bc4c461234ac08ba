package core

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// TestSlotPlanSharedSlot: members that map to one slot get it created
// once, never dropped while one of them is present, and the step fails
// naming them.
func TestSlotPlanSharedSlot(t *testing.T) {
	want, drop, shared := SlotPlan([]string{"node_1", "n3", "node-1"}, []string{"node.1", "n4"})
	if !slices.Equal(want, []string{"n3", "node-1"}) {
		t.Errorf("want %q, want one member per slot: [n3 node-1]", want)
	}
	if !slices.Equal(drop, []string{"n4"}) {
		t.Errorf("drop %q: node.1 left but its slot is node-1's and node_1's; want [n4]", drop)
	}
	if got := map[string][]string{"node_1": {"node-1", "node_1"}}; !maps.EqualFunc(shared, got, slices.Equal) {
		t.Errorf("shared %v, want %v", shared, got)
	}
	err := SharedSlotsError(shared)
	if err == nil || !strings.Contains(err.Error(), `members node-1, node_1 share replication slot "node_1"`) {
		t.Errorf("error %v", err)
	}

	want, drop, shared = SlotPlan([]string{"n2", "n3"}, []string{"n4"})
	if !slices.Equal(want, []string{"n2", "n3"}) || !slices.Equal(drop, []string{"n4"}) || shared != nil || SharedSlotsError(shared) != nil {
		t.Errorf("distinct slots: want %q, drop %q, shared %v", want, drop, shared)
	}
}

func TestSlotConflict(t *testing.T) {
	for _, tc := range []struct {
		name   string
		others []string
		want   string
	}{
		{"node_1", []string{"n2", "node-1"}, "node-1"},
		{"N1", []string{"n1"}, "n1"},
		{"n1", []string{"n1", "n2"}, ""}, // its own record
		{"n1", nil, ""},
	} {
		if got := SlotConflict(tc.name, tc.others); got != tc.want {
			t.Errorf("SlotConflict(%q, %q) = %q, want %q", tc.name, tc.others, got, tc.want)
		}
	}
}

// TestValidateNameFitsASlot: PostgreSQL truncates slot names to 63 bytes
// when it creates a slot, so two long names with a common prefix would
// share one; such names are refused.
func TestValidateNameFitsASlot(t *testing.T) {
	r := Rules{Timing: DefaultTiming(), CrashRestartTimeout: DefaultCrashRestartTimeout}
	r.Name = strings.Repeat("a", maxSlotName)
	if err := r.Validate(); err != nil {
		t.Errorf("63 characters: %v", err)
	}
	r.Name = strings.Repeat("a", maxSlotName+1)
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "at most 63 characters") {
		t.Errorf("64 characters: %v", err)
	}
}
