package cluster

import (
	"encoding/json"
	"testing"
)

// The history, switchover and sync keys are read by every agent and by
// ctl: whatever they hold, parsing returns an error or a value that
// re-encodes and parses to itself, never a panic.

func FuzzParseHistory(f *testing.F) {
	for _, s := range []string{
		`[{"timeline":1,"lsn":"0/0","reason":"bootstrap","time":"2026-11-22T03:04:05Z","new_leader":"n1"}]`,
		`[{"timeline":2,"lsn":"0/4034A28","reason":"failover","new_leader":"n2","old_leader":"n1","epoch":42}]`,
		`[{"timeline":0}]`, `[{"timeline":3,"new_leader":"a b"}]`, `[]`, `null`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHistory(data)
		if err != nil {
			return
		}
		for _, e := range h {
			if e.Timeline < 1 {
				t.Fatalf("accepted timeline %d", e.Timeline)
			}
		}
		b, err := MarshalHistory(h)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseHistory(b)
		if err != nil || len(back) != len(h) {
			t.Fatalf("round trip of %s: %v (%d entries, want %d)", b, err, len(back), len(h))
		}
	})
}

func FuzzParseSwitchover(f *testing.F) {
	for _, s := range []string{
		`{"leader":"n1","candidate":"n2","requested_at":"2026-11-22T03:04:05Z"}`,
		`{"candidate":"n2","failover":true,"handover":true,"handover_at":"2026-11-22T03:04:05Z"}`,
		`{"handover":true}`, `{"candidate":"../x"}`, `{"scheduled_at":"not a time"}`, `null`, `[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sw, err := ParseSwitchover(data)
		if err != nil {
			return
		}
		if sw.Handover && sw.Candidate == "" {
			t.Fatal("accepted a hand-over without a candidate")
		}
		b, err := json.Marshal(sw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseSwitchover(b); err != nil {
			t.Fatalf("round trip of %s: %v", b, err)
		}
	})
}

func FuzzParseSyncState(f *testing.F) {
	for _, s := range []string{
		`{"leader":"n1","sync_standby":["n2"]}`, `{"leader":"n1","sync_standby":[]}`,
		`{"leader":"","sync_standby":["n2"]}`, `{"leader":"n1","sync_standby":["a/b"]}`, `null`, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseSyncState(data)
		if err != nil {
			return
		}
		if !ValidName(st.Leader) {
			t.Fatalf("accepted leader %q", st.Leader)
		}
		for _, n := range st.Standbys {
			if !ValidName(n) || !st.Has(n) {
				t.Fatalf("accepted standby %q", n)
			}
		}
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseSyncState(b); err != nil {
			t.Fatalf("round trip of %s: %v", b, err)
		}
	})
}

// Proxy records are read by every proxy (cancel forwarding), ctl and the
// agents: whatever a key holds, parsing returns an error or a record that
// validates, re-encodes and parses to itself.
func FuzzParseProxy(f *testing.F) {
	for _, s := range []string{
		`{"name":"px1:6432","version":"v1","listeners":{"rw":"10.0.0.5:6432","ro":"[::1]:6433"},"started_at":"2026-12-02T18:00:00Z","cancel_id":3}`,
		`{"name":"px1","listeners":{"ro":"h:1"},"drain_ack":7}`, `{"name":"px1","listeners":{"rw":"h:1"},"cancel_id":511}`,
		`{"name":"px1","listeners":{"rw":"h:1"},"cancel_id":512}`, `{"name":"px1","listeners":{"rw":"h"}}`,
		`{"name":"px1","listeners":{"rw":"10.0.0.5:64`, `null`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseProxy(data)
		if err != nil {
			return
		}
		if p.CancelID > MaxCancelID || !ValidProxyName(p.Name) || p.Listeners.CancelAddr() == "" {
			t.Fatalf("accepted %+v", p)
		}
		b, err := MarshalProxy(p)
		if err != nil {
			t.Fatalf("re-encoding an accepted record: %v", err)
		}
		back, err := ParseProxy(b)
		if err != nil || !back.StartedAt.Equal(p.StartedAt) {
			t.Fatalf("round trip of %s: %v", b, err)
		}
		back.StartedAt = p.StartedAt
		if back != p {
			t.Fatalf("round trip of %s: %+v, want %+v", b, back, p)
		}
	})
}
