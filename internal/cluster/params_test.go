package cluster

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// TestCheckParameterRefusesSmuggling: each hostile name or value would
// add or change a line of pharos.conf; each is refused with the reason.
func TestCheckParameterRefusesSmuggling(t *testing.T) {
	for _, tt := range []struct {
		name, param, value, wantErr string
	}{
		{"a second assignment in the name", "port '6001' #", "x", "parameter name"},
		{"an assignment in the name", "work_mem=1MB\nport", "x", "parameter name"},
		{"a space", "work mem", "1MB", "parameter name"},
		{"a quote", "work_mem'", "1MB", "parameter name"},
		{"two dots", "a.b.c", "1", "parameter name"},
		{"a leading dot", ".max", "1", "parameter name"},
		{"a trailing dot", "pg_stat_statements.", "1", "parameter name"},
		{"a leading digit", "1work_mem", "1", "parameter name"},
		{"a digit after the dot", "ext.1max", "1", "parameter name"},
		{"not ASCII", "wörk_mem", "1", "parameter name"},
		{"empty", "", "1", "parameter name"},
		{"include", "include", "/tmp/evil.conf", "include directive"},
		{"include_dir in capitals", "INCLUDE_DIR", "/tmp", "include directive"},
		{"include_if_exists", "Include_If_Exists", "/tmp/x", "include directive"},
		{"a line feed in the value", "work_mem", "1MB\nport = '6001'", `"\n" at byte 3`},
		{"a carriage return in the value", "work_mem", "1MB\rport = '6001'", `"\r" at byte 3`},
		{"a NUL in the value", "application_name", "a\x00b", `"\x00" at byte 1`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckParameter(tt.param, tt.value)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("CheckParameter(%q, %q) = %v, want an error containing %q", tt.param, tt.value, err, tt.wantErr)
			}
		})
	}
}

// TestCheckParameterAcceptsRealSettings: what operators set stays
// accepted, quotes, backslashes and all (the writer quotes them).
func TestCheckParameterAcceptsRealSettings(t *testing.T) {
	for _, tt := range []struct{ param, value string }{
		{"shared_preload_libraries", "pg_stat_statements,auto_explain"},
		{"pg_stat_statements.max", "10000"},
		{"auto_explain.log_min_duration", "250ms"},
		{"Work_Mem", "64MB"},
		{"_private", "1"},
		{"log_line_prefix", "%m [%p] %q%u@%d "},
		{"archive_command", `test ! -f /arch/%f && cp %p '/arch/%f'`},
		{"restore_command", `copy "C:\\server\\archivedir\\%f" "%p"`},
		{"search_path", `"$user", public`},
		{"application_name", "tab\there"},
		{"statement_timeout", ""},
	} {
		if err := CheckParameter(tt.param, tt.value); err != nil {
			t.Errorf("CheckParameter(%q, %q) = %v", tt.param, tt.value, err)
		}
	}
}

func TestProtectedParameterIgnoresCase(t *testing.T) {
	for _, name := range []string{"port", "PORT", "Primary_Conninfo", "listen_ADDRESSES", "hba_file", "Data_Directory"} {
		if !ProtectedParameter(name) {
			t.Errorf("ProtectedParameter(%q) = false", name)
		}
	}
	for _, name := range []string{"work_mem", "portx", "pg_stat_statements.max", ""} {
		if ProtectedParameter(name) {
			t.Errorf("ProtectedParameter(%q) = true", name)
		}
	}
}

// TestCheckHostRefusesConninfoSmuggling: hosts a forged member record or a
// bad agent setting could carry into a connection string.
func TestCheckHostRefusesConninfoSmuggling(t *testing.T) {
	for _, tt := range []struct{ name, host string }{
		{"vertical tab and a keyword", "10.9.9.9\vsslmode=disable"},
		{"space and a keyword", "10.9.9.9 sslmode=disable"},
		{"tab", "db1\tsslmode=disable"},
		{"line feed", "db1\nport=1"},
		{"form feed", "db1\fsslmode=disable"},
		{"a quote", "db1'"},
		{"a backslash", `db1\`},
		{"equals", "sslmode=disable"},
		{"several hosts", "db1,db2"},
		{"a Unix socket directory", "/var/run/postgresql"},
		{"bracketed IPv6", "[::1]"},
		{"host and port", "db1:5432"},
		{"a URL", "postgres://db1"},
		{"an IPv6 zone with a space", "fe80::1%eth0 sslmode=disable"},
		{"a label starting with a dash", "-db1"},
		{"a label ending with a dash", "db1-.example"},
		{"an empty label", "db1..example"},
		{"a lone dot", "."},
		{"not ASCII", "bäse"},
		{"a NUL", "db1\x00"},
		{"a label over 63 bytes", strings.Repeat("a", 64) + ".example"},
		{"over 253 bytes", strings.Repeat("a.", 127) + "ab"},
		{"empty", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckHost(tt.host); err == nil {
				t.Fatalf("CheckHost(%q) = nil, want a refusal", tt.host)
			}
			m := Member{Name: "n1", Role: RoleReplica, Host: tt.host, Port: 5432}
			if _, err := ParseMember([]byte(`{"name":"n1","role":"replica","port":5432,"host":` + strconv.Quote(tt.host) + `}`)); err == nil {
				t.Fatalf("ParseMember accepted host %q", tt.host)
			}
			if _, err := MarshalMember(m); err == nil {
				t.Fatalf("MarshalMember accepted host %q", tt.host)
			}
		})
	}
}

func TestCheckHostAcceptsHostsAndAddresses(t *testing.T) {
	for _, host := range []string{
		"10.0.0.1", "127.0.0.1", "::1", "fd00::2", "2001:db8::10", "fe80::1%eth0", "::ffff:10.0.0.1",
		"db1", "pg-node-1", "pg-node-1.db.example.com", "pg-node-1.db.example.com.", "PG-Node-1",
		"pg_1", "1db", strings.Repeat("a", 63) + ".example",
	} {
		if err := CheckHost(host); err != nil {
			t.Errorf("CheckHost(%q) = %v", host, err)
		}
	}
}

// The member host is parsed wherever a record is read: whatever CheckHost
// accepts makes an address that splits back into the same host.
func FuzzCheckHost(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "::1", "fe80::1%eth0", "db-1.example.", "10.9.9.9\vsslmode=disable", "a b", "[::1]", "-a", "a..b", "a%b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		if CheckHost(host) != nil {
			return
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !hostByte(c) && c != '.' && c != ':' && c != '%' {
				t.Fatalf("accepted %q with byte %q", host, c)
			}
		}
		h, p, err := net.SplitHostPort(Member{Host: host, Port: 5432}.Addr())
		if err != nil || h != host || p != "5432" {
			t.Fatalf("Addr of %q splits into %q, %q, %v", host, h, p, err)
		}
	})
}

// Whatever CheckParameter accepts is a name postgresql.conf reads as one
// token and a value that stays on its line.
func FuzzCheckParameter(f *testing.F) {
	for _, s := range [][2]string{
		{"work_mem", "64MB"}, {"pg_stat_statements.max", "1"}, {"port '6001' #", "x"},
		{"include", "/x"}, {"a.b.c", "1"}, {"work_mem", "1\n2"}, {"x", "a\x00"}, {"_", `\'`},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		if CheckParameter(name, value) != nil {
			return
		}
		if strings.Count(name, ".") > 1 || strings.ContainsAny(value, "\r\n\x00") {
			t.Fatalf("accepted %q = %q", name, value)
		}
		for i := 0; i < len(name); i++ {
			if c := name[i]; !(c == '.' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				t.Fatalf("accepted name %q with byte %q", name, c)
			}
		}
		if directives[strings.ToLower(name)] {
			t.Fatalf("accepted directive %q", name)
		}
	})
}
