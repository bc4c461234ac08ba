package cluster

import (
	"encoding/json"
	"maps"
	"reflect"
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	lag := func(n int64) *int64 { return &n }
	for _, tc := range []struct {
		name, data string
		want       DynamicConfig // Object not compared
		err        string        // "" for none
		object     bool          // Object set despite err
	}{
		{name: "empty", data: `{}`, want: DynamicConfig{Parameters: map[string]string{}}},
		{name: "null is empty", data: `null`, want: DynamicConfig{Parameters: map[string]string{}}},
		{name: "every key", data: `{"pause":true,"maximum_lag_on_failover":4194304,"synchronous_mode":true,"synchronous_mode_strict":true,"synchronous_node_count":2,
			"postgresql":{"use_slots":true,"parameters":{"work_mem":"64MB","hot_standby_feedback":true,"fsync":false,"max_connections":200,"big":1000000,"ratio":0.5}},"unknown":{"kept":1}}`,
			want: DynamicConfig{Pause: true, MaxLag: lag(4194304), SyncMode: true, SyncStrict: true, SyncCount: 2, Parameters: map[string]string{
				"work_mem": "64MB", "hot_standby_feedback": "on", "fsync": "off", "max_connections": "200", "big": "1e+06", "ratio": "0.5",
			}}},
		{name: "nulls are unset", data: `{"pause":null,"maximum_lag_on_failover":null,"synchronous_node_count":null,"postgresql":{"parameters":null}}`,
			want: DynamicConfig{Parameters: map[string]string{}}},
		{name: "a negative lag is taken as written", data: `{"maximum_lag_on_failover":-1}`, want: DynamicConfig{MaxLag: lag(-1), Parameters: map[string]string{}}},
		{name: "keys are matched exactly", data: `{"PAUSE":true}`, want: DynamicConfig{Parameters: map[string]string{}}},

		{name: "not JSON", data: `{`, err: "config:"},
		{name: "not an object", data: `[1]`, err: "config:"},
		{name: "a string for pause", data: `{"pause":"yes","synchronous_mode":true}`, err: `pause "yes" is not true or false`, object: true},
		{name: "a word for the lag", data: `{"maximum_lag_on_failover":"lots"}`, err: `maximum_lag_on_failover "lots" is not a number of bytes`, object: true},
		{name: "an exponent for the lag", data: `{"maximum_lag_on_failover":1e6}`, err: "maximum_lag_on_failover 1e6 is not a number of bytes", object: true},
		{name: "a fraction for the count", data: `{"synchronous_node_count":1.5}`, err: "synchronous_node_count 1.5 is not a whole number", object: true},
		{name: "postgresql not an object", data: `{"postgresql":"x"}`, err: `postgresql "x" is not an object`, object: true},
		{name: "parameters not an object", data: `{"postgresql":{"parameters":[1]}}`, err: "postgresql.parameters [1] is not an object", object: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tc.data))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one with %q", err, tc.err)
				}
				if (got.Object != nil) != tc.object {
					t.Errorf("Object = %v, want it set: %v", got.Object, tc.object)
				}
				got.Object = nil
				if !reflect.DeepEqual(got, DynamicConfig{}) {
					t.Errorf("typed fields set despite the error: %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Object == nil {
				t.Error("Object is nil")
			}
			got.Object = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestParseConfigObjectAsWritten: Object is the key as a plain decode
// gives it (numbers as float64), unknown keys included, for ctl to show
// and edit.
func TestParseConfigObjectAsWritten(t *testing.T) {
	data := `{"pause":true,"maximum_lag_on_failover":5,"postgresql":{"parameters":{"work_mem":"64MB"}},"x":[1,"a"]}`
	got, err := ParseConfig([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := json.Unmarshal([]byte(data), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Object, want) {
		t.Errorf("Object = %#v, want %#v", got.Object, want)
	}
}

// FuzzParseConfig: whatever the key holds, ParseConfig returns an error or
// a configuration whose Object encodes and parses to the same meaning;
// an error leaves the typed fields zero.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{}`, `null`, `{"pause":true,"maximum_lag_on_failover":1048576,"synchronous_mode":true,"synchronous_node_count":2}`,
		`{"postgresql":{"parameters":{"work_mem":"64MB","on":true,"n":1e21,"o":{"a":[1]}}}}`,
		`{"pause":"yes"}`, `{"maximum_lag_on_failover":1.5}`, `{"maximum_lag_on_failover":99999999999999999999}`,
		`{"postgresql":[]}`, `[`, `"x"`, `{"a":1e400}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			obj := c.Object
			c.Object = nil
			if !reflect.DeepEqual(c, DynamicConfig{}) {
				t.Fatalf("typed fields set despite %v: %+v", err, c)
			}
			if obj != nil {
				// The object was readable: it encodes and parses to the
				// same error.
				b, merr := json.Marshal(obj)
				if merr != nil {
					t.Fatal(merr)
				}
				if _, err2 := ParseConfig(b); err2 == nil {
					t.Fatalf("%s fails (%v) but its object %s parses", data, err, b)
				}
			}
			return
		}
		if c.Object == nil || c.Parameters == nil {
			t.Fatalf("nil Object or Parameters: %+v", c)
		}
		b, err := json.Marshal(c.Object)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseConfig(b)
		// Object holds numbers as float64 (so does ctl's edit, which
		// rewrites it): integers beyond 2^53 do not survive, and are no
		// byte counts or standby counts anyone writes.
		const exact = 1 << 53
		if c.MaxLag != nil && (*c.MaxLag > exact || *c.MaxLag < -exact) || c.SyncCount > exact || c.SyncCount < -exact {
			return
		}
		if err != nil {
			t.Fatalf("round trip of %s through %s: %v", data, b, err)
		}
		if !maps.Equal(back.Parameters, c.Parameters) || back.Pause != c.Pause || back.SyncMode != c.SyncMode ||
			back.SyncStrict != c.SyncStrict || back.SyncCount != c.SyncCount || (back.MaxLag == nil) != (c.MaxLag == nil) ||
			c.MaxLag != nil && *back.MaxLag != *c.MaxLag {
			t.Fatalf("round trip of %s through %s changed the meaning:\n%+v\n%+v", data, b, c, back)
		}
	})
}
