package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// DynamicConfig is the config key: the cluster-wide settings every agent
// applies (and ctl edits), a JSON object like Patroni's dynamic
// configuration. ParseConfig is its only reader.
type DynamicConfig struct {
	// Pause stops automatic failover and demotion.
	Pause bool
	// MaxLag is maximum_lag_on_failover in bytes; nil when the key sets
	// none (each agent then uses its own setting). It is taken as written,
	// negative included (no limit, to an agent; ctl refuses to write one).
	MaxLag *int64
	// SyncMode, SyncStrict and SyncCount are synchronous_mode,
	// synchronous_mode_strict and synchronous_node_count (0 when unset).
	SyncMode, SyncStrict bool
	SyncCount            int
	// Parameters are postgresql.parameters as pharos.conf values: a
	// string as it is, a boolean as on or off, a number as Go prints a
	// float64 (1e+06 for 1000000), anything else as fmt prints it. Names
	// and values are not checked here: the agent skips those
	// CheckParameter or ProtectedParameter refuse.
	Parameters map[string]string
	// Object is the whole key as decoded, for ctl to show and edit; never
	// nil after a successful parse.
	Object map[string]any
}

// ParseConfig reads the config key. It fails when data is not a JSON
// object (or null, which is an empty configuration), and when a key the
// agents read has the wrong type (pause: "yes"). The agents then ignore
// the whole key, as they always have, rather than guess at part of it.
// On a wrong type the returned value still carries Object, so that ctl
// can show the key and an operator repair it; its other fields are zero.
func ParseConfig(data []byte) (DynamicConfig, error) {
	var obj map[string]any
	if err := json.Unmarshal(data, &obj); err != nil {
		return DynamicConfig{}, fmt.Errorf("config: %w", err)
	}
	if obj == nil {
		obj = map[string]any{}
	}
	// Numbers again, as written: maximum_lag_on_failover must be an
	// integer literal, as an int64 field of encoding/json takes it.
	var num map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&num); err != nil {
		return DynamicConfig{}, fmt.Errorf("config: %w", err)
	}
	c, err := configFrom(num)
	if err != nil {
		return DynamicConfig{Object: obj}, fmt.Errorf("config: %w", err)
	}
	c.Object = obj
	return c, nil
}

func configFrom(m map[string]any) (DynamicConfig, error) {
	var c DynamicConfig
	for _, f := range []struct {
		key string
		to  *bool
	}{{"pause", &c.Pause}, {"synchronous_mode", &c.SyncMode}, {"synchronous_mode_strict", &c.SyncStrict}} {
		switch v := m[f.key].(type) {
		case nil:
		case bool:
			*f.to = v
		default:
			return DynamicConfig{}, fmt.Errorf("%s %s is not true or false", f.key, jsonText(v))
		}
	}
	if v := m["maximum_lag_on_failover"]; v != nil {
		n, ok := integer(v, 64)
		if !ok {
			return DynamicConfig{}, fmt.Errorf("maximum_lag_on_failover %s is not a number of bytes", jsonText(v))
		}
		c.MaxLag = &n
	}
	if v := m["synchronous_node_count"]; v != nil {
		n, ok := integer(v, strconv.IntSize)
		if !ok {
			return DynamicConfig{}, fmt.Errorf("synchronous_node_count %s is not a whole number", jsonText(v))
		}
		c.SyncCount = int(n)
	}
	c.Parameters = map[string]string{}
	var pg map[string]any
	switch v := m["postgresql"].(type) {
	case nil:
	case map[string]any:
		pg = v
	default:
		return DynamicConfig{}, fmt.Errorf("postgresql %s is not an object", jsonText(v))
	}
	switch v := pg["parameters"].(type) {
	case nil:
	case map[string]any:
		for k, p := range v {
			c.Parameters[k] = parameterValue(p)
		}
	default:
		return DynamicConfig{}, fmt.Errorf("postgresql.parameters %s is not an object", jsonText(v))
	}
	return c, nil
}

// integer reads a JSON integer literal as an integer field of
// encoding/json would: no fraction, no exponent, within bits.
func integer(v any, bits int) (int64, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	i, err := strconv.ParseInt(string(n), 10, bits)
	return i, err == nil
}

// parameterValue writes a parameter's JSON value as pharos.conf takes it.
func parameterValue(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case bool:
		if v {
			return "on"
		}
		return "off"
	case json.Number:
		// In range: the plain decode of the same data succeeded.
		f, _ := v.Float64()
		return fmt.Sprint(f)
	}
	return fmt.Sprint(plain(v))
}

// plain turns json.Numbers back into float64s, as a decoder without
// UseNumber would have left them.
func plain(v any) any {
	switch v := v.(type) {
	case json.Number:
		f, _ := v.Float64()
		return f
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = plain(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = plain(e)
		}
		return out
	}
	return v
}

// jsonText quotes a value as it was written, for an error message.
func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
