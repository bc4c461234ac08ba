package bench

import (
	"slices"
	"strings"
	"testing"
)

func TestParseTarget(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		want    Target
		wantErr string // substring; empty means success
	}{
		{"url", "direct=postgres://u@127.0.0.1:5432/db?sslmode=disable",
			Target{"direct", "postgres://u@127.0.0.1:5432/db?sslmode=disable"}, ""},
		{"key=value DSN keeps its own equals signs", "pharos=host=127.0.0.1 port=6432 user=u",
			Target{"pharos", "host=127.0.0.1 port=6432 user=u"}, ""},
		{"missing name", "=postgres://h/db", Target{}, "want name=DSN"},
		{"missing DSN", "direct=", Target{}, "want name=DSN"},
		{"no equals sign", "direct", Target{}, "want name=DSN"},
		{"bare URL without a name", "postgres://h/db?sslmode=disable", Target{}, "want name=DSN, the name made of letters"},
		{"unparsable DSN", "direct=postgres://u:secret@h:notaport/db", Target{}, "direct:"},
		{"bare URL with a password", "postgres://u:secret@h/db?sslmode=disable", Target{}, "want name=DSN"},
		{"bare key=value DSN with a password", "host=h password=secret port=x", Target{}, "host:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseTarget(c.in)
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q leaks the password", err)
			}
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("ParseTarget(%q) error = %v, want one containing %q", c.in, err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("ParseTarget(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			}
		})
	}
}

func TestParseModes(t *testing.T) {
	cases := []struct {
		in   string
		want []Mode
	}{
		{"simple", []Mode{ModeSimple}},
		{"extended", []Mode{ModeExtended}},
		{"both", []Mode{ModeSimple, ModeExtended}},
		{"prepared", nil},
		{"", nil},
	}
	for _, c := range cases {
		got, err := ParseModes(c.in)
		if (err != nil) != (c.want == nil) || !slices.Equal(got, c.want) {
			t.Errorf("ParseModes(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
}

func TestBaselineIndex(t *testing.T) {
	cases := []struct {
		name    string
		targets []string
		want    int
	}{
		{"first by default", []string{"pharos", "pgbouncer"}, 0},
		{"direct wherever it is", []string{"pharos", "pgbouncer", "direct"}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var ts []Target
			for _, n := range c.targets {
				ts = append(ts, Target{Name: n})
			}
			if got := BaselineIndex(ts); got != c.want {
				t.Errorf("BaselineIndex(%v) = %d, want %d", c.targets, got, c.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	good := func() Config {
		return Config{
			Targets:  []Target{{Name: "direct", DSN: "postgres://h/db"}},
			Modes:    []Mode{ModeSimple},
			Clients:  []int{1},
			Duration: 1,
			Rounds:   1,
			Accounts: 100000,
		}
	}
	cases := []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"good", func(*Config) {}, ""},
		{"no targets", func(c *Config) { c.Targets = nil }, "no targets"},
		{"duplicate target", func(c *Config) { c.Targets = append(c.Targets, c.Targets[0]) }, "given twice"},
		{"no modes", func(c *Config) { c.Modes = nil }, "no modes"},
		{"unknown mode", func(c *Config) { c.Modes = []Mode{"prepared"} }, "unknown mode"},
		{"no client counts", func(c *Config) { c.Clients = nil }, "no client counts"},
		{"zero clients", func(c *Config) { c.Clients = []int{16, 0} }, "clients 0"},
		{"too many clients", func(c *Config) { c.Clients = []int{MaxClients + 1} }, "clients 1001"},
		{"unknown workload", func(c *Config) { c.Workloads = []Workload{"tpcc"} }, "unknown workload"},
		{"write needs accounts even with a query", func(c *Config) {
			c.Accounts = 0
			c.Query = "SELECT 1"
			c.Workloads = []Workload{WorkloadSelect, WorkloadWrite}
		}, "accounts"},
		{"zero duration", func(c *Config) { c.Duration = 0 }, "duration"},
		{"zero rounds", func(c *Config) { c.Rounds = 0 }, "rounds"},
		{"negative warmup", func(c *Config) { c.Warmup = -1 }, "warmup"},
		{"zero accounts", func(c *Config) { c.Accounts = 0 }, "accounts"},
		{"accounts ignored with a query", func(c *Config) { c.Accounts = 0; c.Query = "SELECT 1" }, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := good()
			c.edit(&cfg)
			err := cfg.validate()
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("validate() = %v, want an error containing %q", err, c.wantErr)
			}
		})
	}
}

func TestParseWorkloadsAndClients(t *testing.T) {
	ws, err := ParseWorkloads("select, write,connect")
	if err != nil || len(ws) != 3 || ws[0] != WorkloadSelect || ws[1] != WorkloadWrite || ws[2] != WorkloadConnect {
		t.Errorf("ParseWorkloads = %v, %v", ws, err)
	}
	for _, bad := range []string{"", "select,", "tpcb", "select,select"} {
		if _, err := ParseWorkloads(bad); err == nil {
			t.Errorf("ParseWorkloads(%q): no error", bad)
		}
	}
	ns, err := ParseClients("1,16, 64")
	if err != nil || len(ns) != 3 || ns[0] != 1 || ns[1] != 16 || ns[2] != 64 {
		t.Errorf("ParseClients = %v, %v", ns, err)
	}
	for _, bad := range []string{"", "0", "-1", "16,16", "x", "1001", "1,,2"} {
		if _, err := ParseClients(bad); err == nil {
			t.Errorf("ParseClients(%q): no error", bad)
		}
	}
}
