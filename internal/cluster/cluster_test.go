package cluster

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

func validMember() Member {
	return Member{Name: "n1", Role: RolePrimary, Host: "10.0.0.1", Port: 5432}
}

func TestMemberRoundTrip(t *testing.T) {
	lag := int64(4096)
	unknown := int64(-1)
	tests := []struct {
		name string
		m    Member
	}{
		{name: "minimal", m: validMember()},
		{
			name: "every field",
			m: Member{
				Name: "pg-2.example.com", Role: RoleReplica, State: "streaming from pg-1", Upstream: "pg-1", Streaming: true,
				Host: "fd00::2", Port: 6432, APIURL: "https://[fd00::2]:8008",
				Timeline: 7, LSN: 0x16B374D848, ReceiveLSN: 0x16B374F000, LagBytes: &lag, Epoch: 42,
				Tags:      Tags{NoFailover: true, NoLoadBalance: true, FailoverPriority: 3},
				UpdatedAt: time.Date(2026, 11, 22, 3, 4, 5, 6000, time.UTC),
			},
		},
		{name: "unknown lag", m: Member{Name: "n3", Role: RoleStarting, Host: "h", Port: 1, LagBytes: &unknown}},
		{name: "largest LSN", m: Member{Name: "n4", Role: RoleDemoted, Host: "h", Port: 65535, LSN: math.MaxUint64}},
		{name: "stopped", m: Member{Name: "n5", Role: RoleStopped, Host: "h", Port: 5432, State: "stopped"}},
		{name: "connecting", m: Member{Name: "n6", Role: RoleReplica, Host: "h", Port: 5432, State: "connecting to n1", Upstream: "n1"}},
		{name: "typed fields win over the state", m: Member{Name: "n7", Role: RoleReplica, Host: "h", Port: 5432, State: "streaming from n1", Upstream: "n2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := MarshalMember(tt.m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseMember(b)
			if err != nil {
				t.Fatalf("ParseMember(%s): %v", b, err)
			}
			if !reflect.DeepEqual(got, tt.m) {
				t.Errorf("round trip of %s:\n got %+v\nwant %+v", b, got, tt.m)
			}
		})
	}
}

func TestMemberJSONShape(t *testing.T) {
	m := validMember()
	m.LSN = 0x16B374D848
	b, err := MarshalMember(m)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	if fields["lsn"] != "16/B374D848" {
		t.Errorf("lsn = %#v, want the text form", fields["lsn"])
	}
	for _, absent := range []string{"receive_lsn", "lag_bytes", "epoch", "updated_at", "state", "api_url", "timeline", "upstream", "streaming"} {
		if _, ok := fields[absent]; ok {
			t.Errorf("%s present in %s", absent, b)
		}
	}
}

func TestMemberValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Member)
		wantErr string
	}{
		{name: "valid", edit: func(*Member) {}},
		{name: "every role", edit: func(m *Member) { m.Role = RoleReplica }},
		{name: "lowest port", edit: func(m *Member) { m.Port = 1 }},
		{name: "highest port", edit: func(m *Member) { m.Port = 65535 }},
		{name: "longest name", edit: func(m *Member) { m.Name = strings.Repeat("a", 128) }},
		{name: "empty name", edit: func(m *Member) { m.Name = "" }, wantErr: "name is empty"},
		{name: "name with slash", edit: func(m *Member) { m.Name = "a/b" }, wantErr: "not a member name"},
		{name: "name with space", edit: func(m *Member) { m.Name = "a b" }, wantErr: "not a member name"},
		{name: "name not ASCII", edit: func(m *Member) { m.Name = "nœud" }, wantErr: "not a member name"},
		{name: "name too long", edit: func(m *Member) { m.Name = strings.Repeat("a", 129) }, wantErr: "name"},
		{name: "empty role", edit: func(m *Member) { m.Role = "" }, wantErr: "role"},
		{name: "Patroni role", edit: func(m *Member) { m.Role = "master" }, wantErr: "role"},
		{name: "empty host", edit: func(m *Member) { m.Host = "" }, wantErr: "host is empty"},
		{name: "port zero", edit: func(m *Member) { m.Port = 0 }, wantErr: "port 0"},
		{name: "port too high", edit: func(m *Member) { m.Port = 65536 }, wantErr: "port 65536"},
		{name: "negative port", edit: func(m *Member) { m.Port = -1 }, wantErr: "port -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validMember()
			tt.edit(&m)
			err := m.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				if _, err := MarshalMember(m); err != nil {
					t.Fatalf("MarshalMember: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
			if _, err := MarshalMember(m); err == nil {
				t.Fatal("MarshalMember accepted an invalid member")
			}
		})
	}
}

func TestParseMember(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		wantErr bool
	}{
		{name: "minimal", data: `{"name":"n1","role":"primary","host":"h","port":5432}`},
		{name: "unknown fields ignored", data: `{"name":"n1","role":"replica","host":"h","port":5432,"future":{"x":1}}`},
		{name: "LSN text", data: `{"name":"n1","role":"replica","host":"h","port":5432,"lsn":"0/3000060"}`},
		{name: "not JSON", data: `name=n1`, wantErr: true},
		{name: "null", data: `null`, wantErr: true},
		{name: "empty object", data: `{}`, wantErr: true},
		{name: "array", data: `[]`, wantErr: true},
		{name: "trailing data", data: `{"name":"n1","role":"primary","host":"h","port":5432} {}`, wantErr: true},
		{name: "LSN as a number", data: `{"name":"n1","role":"primary","host":"h","port":5432,"lsn":50331744}`, wantErr: true},
		{name: "LSN malformed", data: `{"name":"n1","role":"primary","host":"h","port":5432,"lsn":"3000060"}`, wantErr: true},
		{name: "port as a string", data: `{"name":"n1","role":"primary","host":"h","port":"5432"}`, wantErr: true},
		{name: "invalid role", data: `{"name":"n1","role":"leader","host":"h","port":5432}`, wantErr: true},
		{name: "bad updated_at", data: `{"name":"n1","role":"primary","host":"h","port":5432,"updated_at":"yesterday"}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseMember([]byte(tt.data))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseMember(%s) = %+v, want error", tt.data, m)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestMemberAddrAndLag(t *testing.T) {
	neg, pos := int64(-5), int64(10)
	tests := []struct {
		name     string
		m        Member
		wantAddr string
		wantLag  int64
	}{
		{name: "IPv4, lag unknown", m: Member{Host: "10.0.0.1", Port: 5432}, wantAddr: "10.0.0.1:5432", wantLag: -1},
		{name: "IPv6 gets brackets", m: Member{Host: "fd00::1", Port: 5433, LagBytes: &pos}, wantAddr: "[fd00::1]:5433", wantLag: 10},
		{name: "host name, negative lag is unknown", m: Member{Host: "db1", Port: 1, LagBytes: &neg}, wantAddr: "db1:1", wantLag: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.m.Addr(); got != tt.wantAddr {
				t.Errorf("Addr() = %q, want %q", got, tt.wantAddr)
			}
			if got := tt.m.Lag(); got != tt.wantLag {
				t.Errorf("Lag() = %d, want %d", got, tt.wantLag)
			}
		})
	}
}

func TestParseLSN(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    LSN
		wantErr bool
	}{
		{name: "zero", in: "0/0", want: 0},
		{name: "largest", in: "FFFFFFFF/FFFFFFFF", want: math.MaxUint64},
		{name: "typical", in: "16/B374D848", want: 0x16B374D848},
		{name: "lower case", in: "16/b374d848", want: 0x16B374D848},
		{name: "leading zeros", in: "00000000/00000001", want: 1},
		{name: "high word only", in: "1/0", want: 1 << 32},
		{name: "low word max", in: "0/FFFFFFFF", want: math.MaxUint32},
		{name: "empty", in: "", wantErr: true},
		{name: "slash only", in: "/", wantErr: true},
		{name: "no low part", in: "0/", wantErr: true},
		{name: "no high part", in: "/0", wantErr: true},
		{name: "no slash", in: "16B374D848", wantErr: true},
		{name: "two slashes", in: "0/0/0", wantErr: true},
		{name: "nine digits high", in: "100000000/0", wantErr: true},
		{name: "nine digits low", in: "0/100000000", wantErr: true},
		{name: "not hex", in: "G/0", wantErr: true},
		{name: "minus sign", in: "-1/0", wantErr: true},
		{name: "plus sign", in: "+1/0", wantErr: true},
		{name: "0x prefix", in: "0x1/0", wantErr: true},
		{name: "underscore", in: "1_0/0", wantErr: true},
		{name: "leading space", in: " 0/0", wantErr: true},
		{name: "trailing space", in: "0/0 ", wantErr: true},
		{name: "decimal byte position", in: "50331744", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLSN(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseLSN(%q) = %v, want error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseLSN(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestLSNString(t *testing.T) {
	tests := []struct {
		name string
		lsn  LSN
		want string
	}{
		{name: "zero", lsn: 0, want: "0/0"},
		{name: "typical", lsn: 0x16B374D848, want: "16/B374D848"},
		{name: "no zero padding", lsn: 0x300000060, want: "3/60"},
		{name: "high word only", lsn: 1 << 32, want: "1/0"},
		{name: "largest", lsn: math.MaxUint64, want: "FFFFFFFF/FFFFFFFF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.lsn.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			back, err := ParseLSN(tt.lsn.String())
			if err != nil || back != tt.lsn {
				t.Errorf("ParseLSN(String()) = %v, %v, want %v", back, err, tt.lsn)
			}
			text, err := tt.lsn.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			var u LSN
			if err := u.UnmarshalText(text); err != nil || u != tt.lsn {
				t.Errorf("UnmarshalText(%s) = %v, %v, want %v", text, u, err, tt.lsn)
			}
		})
	}
}

func TestNewKeys(t *testing.T) {
	tests := []struct {
		name    string
		cluster string
		want    string
		wantErr bool
	}{
		{name: "plain", cluster: "main", want: "/pharos/main/"},
		{name: "dots and dashes", cluster: "eu-1.prod", want: "/pharos/eu-1.prod/"},
		{name: "empty", cluster: "", wantErr: true},
		{name: "slash", cluster: "a/b", wantErr: true},
		{name: "space", cluster: "a b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewKeys(tt.cluster)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NewKeys(%q) = %q, want error", tt.cluster, k.Prefix())
				}
				return
			}
			if err != nil || k.Prefix() != tt.want {
				t.Errorf("NewKeys(%q) = %q, %v, want %q", tt.cluster, k.Prefix(), err, tt.want)
			}
		})
	}
}

func TestKeysClassify(t *testing.T) {
	k, err := NewKeys("main")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		key      string
		wantKind KeyKind
		wantName string
	}{
		{name: "leader", key: k.Leader(), wantKind: KeyLeader},
		{name: "member", key: k.Member("n1"), wantKind: KeyMember, wantName: "n1"},
		{name: "config", key: k.Config(), wantKind: KeyConfig},
		{name: "initialize", key: k.Initialize(), wantKind: KeyInitialize},
		{name: "switchover", key: k.Switchover(), wantKind: KeySwitchover},
		{name: "sync", key: k.Sync(), wantKind: KeySync},
		{name: "history", key: k.History(), wantKind: KeyHistory},
		{name: "literal paths", key: "/pharos/main/members/pg-1.example.com", wantKind: KeyMember, wantName: "pg-1.example.com"},
		{name: "members dir with empty name", key: k.MembersPrefix(), wantKind: KeyUnknown},
		{name: "members nested", key: "/pharos/main/members/a/b", wantKind: KeyUnknown},
		{name: "member name with space", key: "/pharos/main/members/a b", wantKind: KeyUnknown},
		{name: "member name too long", key: "/pharos/main/members/" + strings.Repeat("a", 129), wantKind: KeyUnknown},
		{name: "prefix itself", key: k.Prefix(), wantKind: KeyUnknown},
		{name: "prefix without slash", key: "/pharos/main", wantKind: KeyUnknown},
		{name: "cluster sharing a prefix", key: "/pharos/main2/leader", wantKind: KeyUnknown},
		{name: "foreign prefix", key: "/service/main/leader", wantKind: KeyUnknown},
		{name: "Patroni status is not a pharos key", key: "/pharos/main/status", wantKind: KeyUnknown},
		{name: "unknown key", key: "/pharos/main/leaderx", wantKind: KeyUnknown},
		{name: "case matters", key: "/pharos/main/Leader", wantKind: KeyUnknown},
		{name: "empty", key: "", wantKind: KeyUnknown},
		{name: "proxy", key: k.Proxy("px1:6432"), wantKind: KeyProxy, wantName: "px1:6432"},
		{name: "proxies dir", key: k.ProxiesPrefix(), wantKind: KeyUnknown},
		{name: "proxy name with slash", key: "/pharos/main/proxies/a/b", wantKind: KeyUnknown},
		{name: "cancel id", key: k.CancelID(17), wantKind: KeyProxyCancelID, wantName: "17"},
		{name: "cancel id zero", key: "/pharos/main/proxy-cancel-ids/0", wantKind: KeyUnknown},
		{name: "cancel id out of range", key: "/pharos/main/proxy-cancel-ids/512", wantKind: KeyUnknown},
		{name: "cancel id with leading zero", key: "/pharos/main/proxy-cancel-ids/017", wantKind: KeyUnknown},
		{name: "cancel id not a number", key: "/pharos/main/proxy-cancel-ids/x", wantKind: KeyUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, name := k.Classify(tt.key)
			if kind != tt.wantKind || name != tt.wantName {
				t.Errorf("Classify(%q) = %v, %q, want %v, %q", tt.key, kind, name, tt.wantKind, tt.wantName)
			}
		})
	}
}

// TestParseMemberFromOlderAgent: an agent from before the typed upstream
// and streaming fields said them only in its state; its records read as if
// it had written them, so that a reader looking at the typed fields alone
// still sees its replicas during a rolling upgrade. Nothing else in a state
// is taken for an upstream.
func TestParseMemberFromOlderAgent(t *testing.T) {
	for _, tc := range []struct {
		name, record string
		upstream     string
		streaming    bool
	}{
		{"streaming", `{"name":"n2","role":"replica","state":"streaming from n1","host":"h","port":5432}`, "n1", true},
		{"connecting", `{"name":"n2","role":"replica","state":"connecting to n1","host":"h","port":5432}`, "n1", false},
		{"no upstream", `{"name":"n2","role":"replica","state":"in recovery, no upstream","host":"h","port":5432}`, "", false},
		{"a Patroni-style word", `{"name":"n2","role":"replica","state":"streaming","host":"h","port":5432}`, "", false},
		{"not a member name", `{"name":"n2","role":"replica","state":"streaming from n1 host=evil","host":"h","port":5432}`, "", false},
		{"not a replica", `{"name":"n2","role":"starting","state":"streaming from n1","host":"h","port":5432}`, "", false},
		{"typed fields are taken as written", `{"name":"n2","role":"replica","state":"streaming from n1","upstream":"n3","host":"h","port":5432}`, "n3", false},
		{"typed streaming without upstream stays so", `{"name":"n2","role":"replica","state":"streaming from n1","streaming":true,"host":"h","port":5432}`, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseMember([]byte(tc.record))
			if err != nil {
				t.Fatal(err)
			}
			if m.Upstream != tc.upstream || m.Streaming != tc.streaming {
				t.Errorf("upstream %q streaming %v, want %q %v", m.Upstream, m.Streaming, tc.upstream, tc.streaming)
			}
			if want := tc.streaming && tc.upstream == "n1"; m.StreamsFrom("n1") != want {
				t.Errorf("StreamsFrom(n1) = %v, want %v", !want, want)
			}
		})
	}
}

func FuzzParseMember(f *testing.F) {
	for _, s := range []string{
		`{"name":"n2","role":"replica","state":"streaming from n1","upstream":"n1","streaming":true,"host":"h","port":5432}`,
		`{"name":"n2","role":"replica","state":"streaming from n1","host":"h","port":5432}`,
		`{"name":"n2","role":"replica","state":"connecting to n1","host":"h","port":5432}`,
		`{"name":"n2","role":"replica","state":"streaming from ","streaming":false,"host":"h","port":5432}`,
		`{"name":"n1","role":"primary","host":"h","port":5432}`,
		`{"name":"pg-2.example.com","role":"replica","state":"streaming","host":"fd00::2","port":6432,"api_url":"https://[fd00::2]:8008","timeline":7,"lsn":"16/B374D848","receive_lsn":"16/B374F000","lag_bytes":4096,"epoch":42,"tags":{"nofailover":true,"noloadbalance":true,"failover_priority":3},"updated_at":"2026-11-22T03:04:05.000006Z"}`,
		`{"name":"n","role":"stopped","host":"h","port":1,"lag_bytes":-1,"updated_at":"2026-11-22T03:04:05+02:00"}`,
		`{"name":"n","role":"demoted","host":"h","port":65535,"lsn":"FFFFFFFF/FFFFFFFF"}`,
		`{}`, `null`, `[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseMember(data)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("parsed member does not validate: %v", err)
		}
		if m.StreamsFrom(m.Upstream) != (m.Role == RoleReplica && m.Streaming && m.Upstream != "") {
			t.Fatalf("StreamsFrom(%q) disagrees with the typed fields: %+v", m.Upstream, m)
		}
		// The state fills the typed fields only when the record has
		// neither, and only with a member name.
		var raw map[string]json.RawMessage
		if json.Unmarshal(data, &raw) == nil {
			var hasUp, hasStreaming bool // encoding/json matches keys whatever their case
			for k := range raw {
				hasUp = hasUp || strings.EqualFold(k, "upstream")
				hasStreaming = hasStreaming || strings.EqualFold(k, "streaming")
			}
			if m.Upstream != "" && !hasUp && !ValidName(m.Upstream) {
				t.Fatalf("upstream %q taken from the state is not a member name", m.Upstream)
			}
			if m.Streaming && !hasStreaming && m.State != "streaming from "+m.Upstream {
				t.Fatalf("streaming taken from state %q", m.State)
			}
		}
		b, err := MarshalMember(m)
		if err != nil {
			t.Fatalf("MarshalMember of a parsed member: %v", err)
		}
		back, err := ParseMember(b)
		if err != nil {
			t.Fatalf("ParseMember(%s): %v", b, err)
		}
		b2, err := MarshalMember(back)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b, b2)
		}
	})
}

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "FFFFFFFF/FFFFFFFF", "16/B374D848", "16/b374d848", "", "/", "0/", "100000000/0", "+1/0", "0x1/0"} {
		f.Add(s, uint64(0x16B374D848))
	}
	f.Add("1/0", uint64(math.MaxUint64))
	f.Fuzz(func(t *testing.T, s string, n uint64) {
		if v, err := ParseLSN(s); err == nil {
			back, err := ParseLSN(v.String())
			if err != nil || back != v {
				t.Fatalf("ParseLSN(%q) = %v; ParseLSN(%q) = %v, %v", s, v, v.String(), back, err)
			}
			if !strings.EqualFold(strings.TrimLeft(s[:strings.IndexByte(s, '/')], "0"), strings.TrimLeft(v.String()[:strings.IndexByte(v.String(), '/')], "0")) {
				t.Fatalf("ParseLSN(%q) = %v: high word differs", s, v)
			}
		}
		l := LSN(n)
		back, err := ParseLSN(l.String())
		if err != nil || back != l {
			t.Fatalf("ParseLSN(%q) = %v, %v, want %v", l.String(), back, err, l)
		}
	})
}

func TestMemberValidateRejectsPathAndBracketForms(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    Member
	}{
		{"name dot", Member{Name: ".", Role: RoleReplica, Host: "h", Port: 1}},
		{"name dot dot", Member{Name: "..", Role: RoleReplica, Host: "h", Port: 1}},
		{"bracketed IPv6 host", Member{Name: "n", Role: RoleReplica, Host: "[::1]", Port: 1}},
		{"host with a slash", Member{Name: "n", Role: RoleReplica, Host: "a/b", Port: 1}},
		{"host with a space", Member{Name: "n", Role: RoleReplica, Host: "a b", Port: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.m.Validate(); err == nil {
				t.Errorf("Validate(%+v) = nil, want an error", tc.m)
			}
		})
	}
	if got := (Member{Name: "n", Role: RoleReplica, Host: "::1", Port: 5432}).Addr(); got != "[::1]:5432" {
		t.Errorf("Addr of an IPv6 host = %q, want [::1]:5432", got)
	}
}
