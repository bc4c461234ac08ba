package cluster

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "patroni", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewPatroniKeys(t *testing.T) {
	tests := []struct {
		name       string
		namespace  string
		scope      string
		wantPrefix string
		wantErr    bool
	}{
		{name: "default namespace", scope: "batman", wantPrefix: "/service/batman/"},
		{name: "namespace without slash", namespace: "service", scope: "batman", wantPrefix: "/service/batman/"},
		{name: "namespace with slashes", namespace: "/service/", scope: "batman", wantPrefix: "/service/batman/"},
		{name: "root namespace", namespace: "/", scope: "batman", wantPrefix: "/batman/"},
		{name: "runs of slashes collapse", namespace: "//db//ha/", scope: "/batman/", wantPrefix: "/db/ha/batman/"},
		{name: "custom namespace", namespace: "/pg", scope: "main-cluster", wantPrefix: "/pg/main-cluster/"},
		{name: "empty scope", namespace: "/service", scope: "", wantErr: true},
		{name: "scope of slashes", namespace: "/service", scope: "//", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewPatroniKeys(tt.namespace, tt.scope)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NewPatroniKeys(%q, %q) = %q, want error", tt.namespace, tt.scope, k.Prefix())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.Prefix() != tt.wantPrefix {
				t.Errorf("Prefix() = %q, want %q", k.Prefix(), tt.wantPrefix)
			}
		})
	}
}

func TestPatroniKeysPaths(t *testing.T) {
	k, err := NewPatroniKeys("", "batman")
	if err != nil {
		t.Fatal(err)
	}
	// The paths Patroni's AbstractDCS builds (patroni/dcs/__init__.py).
	tests := []struct {
		name string
		got  string
		want string
	}{
		{name: "leader", got: k.Leader(), want: "/service/batman/leader"},
		{name: "members", got: k.MembersPrefix(), want: "/service/batman/members/"},
		{name: "member", got: k.Member("node1"), want: "/service/batman/members/node1"},
		{name: "status", got: k.Status(), want: "/service/batman/status"},
		{name: "legacy optime", got: k.LegacyOptime(), want: "/service/batman/optime/leader"},
		{name: "config", got: k.Config(), want: "/service/batman/config"},
		{name: "initialize", got: k.Initialize(), want: "/service/batman/initialize"},
		{name: "failover", got: k.Failover(), want: "/service/batman/failover"},
		{name: "sync", got: k.Sync(), want: "/service/batman/sync"},
		{name: "history", got: k.History(), want: "/service/batman/history"},
		{name: "failsafe", got: k.Failsafe(), want: "/service/batman/failsafe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestPatroniKeysClassify(t *testing.T) {
	k, err := NewPatroniKeys("/service", "batman")
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
		{name: "member", key: k.Member("node1"), wantKind: KeyMember, wantName: "node1"},
		{name: "member with dots", key: "/service/batman/members/pg-1.example.com", wantKind: KeyMember, wantName: "pg-1.example.com"},
		// Patroni accepts it; ParsePatroniMember reports it.
		{name: "member pharos cannot name", key: "/service/batman/members/node 1", wantKind: KeyMember, wantName: "node 1"},
		{name: "status", key: k.Status(), wantKind: KeyStatus},
		{name: "legacy optime", key: k.LegacyOptime(), wantKind: KeyLegacyOptime},
		{name: "config", key: k.Config(), wantKind: KeyConfig},
		{name: "initialize", key: k.Initialize(), wantKind: KeyInitialize},
		{name: "failover", key: k.Failover(), wantKind: KeyFailover},
		{name: "sync", key: k.Sync(), wantKind: KeySync},
		{name: "history", key: k.History(), wantKind: KeyHistory},
		{name: "failsafe", key: k.Failsafe(), wantKind: KeyFailsafe},
		{name: "members dir with empty name", key: "/service/batman/members/", wantKind: KeyUnknown},
		{name: "members nested", key: "/service/batman/members/a/b", wantKind: KeyUnknown},
		{name: "optime dir alone", key: "/service/batman/optime", wantKind: KeyUnknown},
		{name: "optime of a member", key: "/service/batman/optime/node1", wantKind: KeyUnknown},
		{name: "prefix itself", key: "/service/batman/", wantKind: KeyUnknown},
		{name: "prefix without slash", key: "/service/batman", wantKind: KeyUnknown},
		{name: "other scope sharing a prefix", key: "/service/batman2/leader", wantKind: KeyUnknown},
		{name: "other namespace", key: "/pharos/batman/leader", wantKind: KeyUnknown},
		{name: "citus group layout", key: "/service/batman/0/leader", wantKind: KeyUnknown},
		{name: "unknown key", key: "/service/batman/leader2", wantKind: KeyUnknown},
		{name: "empty", key: "", wantKind: KeyUnknown},
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

func TestPatroniKeyKindsDistinct(t *testing.T) {
	seen := map[KeyKind]string{}
	for name, kind := range map[string]KeyKind{
		"KeyUnknown": KeyUnknown, "KeyLeader": KeyLeader, "KeyMember": KeyMember, "KeyConfig": KeyConfig,
		"KeyInitialize": KeyInitialize, "KeySwitchover": KeySwitchover, "KeySync": KeySync, "KeyHistory": KeyHistory,
		"KeyStatus": KeyStatus, "KeyLegacyOptime": KeyLegacyOptime, "KeyFailover": KeyFailover, "KeyFailsafe": KeyFailsafe,
	} {
		if other, ok := seen[kind]; ok {
			t.Errorf("%s and %s share value %d", name, other, kind)
		}
		seen[kind] = name
	}
}

func TestParsePatroniMember(t *testing.T) {
	tests := []struct {
		name    string
		fixture string
		want    Member
		wantErr string
	}{
		{
			name:    "Patroni 3 primary says master",
			fixture: "primary_v3_master.json",
			want: Member{Role: RolePrimary, State: "running", Host: "10.0.0.11", Port: 5432,
				APIURL: "http://10.0.0.11:8008/patroni", Timeline: 3, LSN: 83886432},
		},
		{
			name:    "Patroni 4 primary",
			fixture: "primary_v4.json",
			want: Member{Role: RolePrimary, State: "running", Host: "10.0.0.12", Port: 5432,
				APIURL: "http://10.0.0.12:8008/patroni", Timeline: 4, LSN: 134217888,
				Tags: Tags{FailoverPriority: 2}},
		},
		{
			name:    "promotion still running is not routable",
			fixture: "promoted_v4.json",
			want: Member{Role: RoleStarting, State: "running", Host: "10.0.0.13", Port: 5432,
				APIURL: "http://10.0.0.13:8008/patroni", Timeline: 4, LSN: 134217888, ReceiveLSN: 134217888},
		},
		{
			name:    "streaming replica with nofailover and noloadbalance",
			fixture: "replica_streaming_tags.json",
			want: Member{Role: RoleReplica, State: "streaming", Host: "10.0.0.14", Port: 5432,
				APIURL: "http://10.0.0.14:8008/patroni", Timeline: 4, LSN: 134216000, ReceiveLSN: 134217000,
				Tags: Tags{NoFailover: true, NoLoadBalance: true}},
		},
		{
			name:    "Patroni 3 replica without replay_lsn uses xlog_location",
			fixture: "replica_v3.json",
			want: Member{Role: RoleReplica, State: "streaming", Host: "10.0.0.15", Port: 5432,
				APIURL: "http://10.0.0.15:8008/patroni", Timeline: 3, LSN: 83886000},
		},
		{
			name:    "string tag false is set, as Python bool() has it",
			fixture: "replica_string_tags.json",
			want: Member{Role: RoleReplica, State: "in archive recovery", Host: "10.0.0.19", Port: 5432,
				APIURL: "http://10.0.0.19:8008/patroni", Timeline: 4, LSN: 134217888,
				Tags: Tags{NoFailover: true}},
		},
		{
			name:    "postgresql scheme, no port, failover_priority 0 means nofailover",
			fixture: "replica_pending_restart.json",
			want: Member{Role: RoleReplica, State: "streaming", Host: "db-3.example.com", Port: 5432,
				APIURL: "https://db-3.example.com:8008/patroni", Timeline: 4, LSN: 134217888, ReceiveLSN: 134217888,
				Tags: Tags{NoFailover: true}},
		},
		{
			name:    "standby_leader routes as a replica",
			fixture: "standby_leader.json",
			want: Member{Role: RoleReplica, State: "streaming", Host: "10.1.0.21", Port: 5432,
				APIURL: "http://10.1.0.21:8008/patroni", Timeline: 4, LSN: 134217888, ReceiveLSN: 134217888},
		},
		{
			name:    "stopped member",
			fixture: "stopped.json",
			want: Member{Role: RoleStopped, State: "stopped", Host: "10.0.0.16", Port: 5432,
				APIURL: "http://10.0.0.16:8008/patroni"},
		},
		{
			name:    "starting replica",
			fixture: "starting.json",
			want: Member{Role: RoleStarting, State: "starting", Host: "10.0.0.16", Port: 5432,
				APIURL: "http://10.0.0.16:8008/patroni"},
		},
		{
			name:    "crashed primary",
			fixture: "crashed_primary.json",
			want: Member{Role: RoleStopped, State: "crashed", Host: "10.0.0.12", Port: 5432,
				APIURL: "http://10.0.0.12:8008/patroni"},
		},
		{
			name:    "demoted former primary",
			fixture: "demoted.json",
			want: Member{Role: RoleDemoted, State: "stopping", Host: "10.0.0.11", Port: 5432,
				APIURL: "http://10.0.0.11:8008/patroni"},
		},
		{
			name:    "replica being cloned",
			fixture: "creating_replica.json",
			want: Member{Role: RoleStarting, State: "creating replica", Host: "10.0.0.20", Port: 5432,
				APIURL: "http://10.0.0.20:8008/patroni"},
		},
		{
			name:    "IPv6 conn_url",
			fixture: "ipv6.json",
			want: Member{Role: RoleReplica, State: "streaming", Host: "fd00:10::17", Port: 5433,
				APIURL: "http://[fd00:10::17]:8008/patroni", Timeline: 4, LSN: 134217888},
		},
		{name: "malformed JSON", fixture: "malformed.json", wantErr: "unexpected end of JSON input"},
		{name: "missing conn_url", fixture: "missing_conn_url.json", wantErr: "conn_url is missing"},
		{name: "bad port", fixture: "bad_port.json", wantErr: "invalid port"},
		{name: "port out of range", fixture: "port_out_of_range.json", wantErr: "out of range"},
		{name: "several hosts", fixture: "multi_host.json", wantErr: "several hosts"},
		{name: "unknown role", fixture: "unknown_role.json", wantErr: `role "leader"`},
		{name: "streaming is a replication_state, not a state", fixture: "streaming_as_state.json", wantErr: `state "streaming"`},
		{name: "Governor connection string", fixture: "governor.txt", wantErr: "Governor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const name = "node1"
			got, err := ParsePatroniMember(name, readFixture(t, tt.fixture))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.want.Name = name
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParsePatroniMemberName(t *testing.T) {
	data := readFixture(t, "primary_v4.json")
	tests := []struct {
		name    string
		member  string
		wantErr bool
	}{
		{name: "plain", member: "node1"},
		{name: "host name", member: "pg-1.example.com"},
		{name: "longest", member: strings.Repeat("n", 128)},
		{name: "empty", member: "", wantErr: true},
		{name: "space", member: "node 1", wantErr: true},
		{name: "slash", member: "a/b", wantErr: true},
		{name: "too long", member: strings.Repeat("n", 129), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParsePatroniMember(tt.member, data)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParsePatroniMember(%q) = %+v, want error", tt.member, m)
				}
				return
			}
			if err != nil || m.Name != tt.member {
				t.Errorf("ParsePatroniMember(%q) = %q, %v", tt.member, m.Name, err)
			}
		})
	}
}

func TestParsePatroniMemberFields(t *testing.T) {
	const base = `"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","state":"running","role":"replica"`
	tests := []struct {
		name    string
		extra   string
		check   func(t *testing.T, m Member)
		wantErr string
	}{
		{name: "xlog_location as a string", extra: `"xlog_location":"12345"`,
			check: func(t *testing.T, m Member) { wantLSN(t, m.LSN, 12345) }},
		{name: "xlog_location unparsable is unknown", extra: `"xlog_location":"0/3000000"`,
			check: func(t *testing.T, m Member) { wantLSN(t, m.LSN, 0) }},
		{name: "xlog_location negative is unknown", extra: `"xlog_location":-1`,
			check: func(t *testing.T, m Member) { wantLSN(t, m.LSN, 0) }},
		{name: "xlog_location null is unknown", extra: `"xlog_location":null`,
			check: func(t *testing.T, m Member) { wantLSN(t, m.LSN, 0) }},
		{name: "largest xlog_location", extra: `"xlog_location":18446744073709551615`,
			check: func(t *testing.T, m Member) { wantLSN(t, m.LSN, math.MaxUint64) }},
		{name: "replay_lsn wins over xlog_location", extra: `"xlog_location":200,"replay_lsn":100,"receive_lsn":200`,
			check: func(t *testing.T, m Member) { wantLSN(t, m.LSN, 100); wantLSN(t, m.ReceiveLSN, 200) }},
		{name: "timeline too large is unknown", extra: `"timeline":9223372036854775808`,
			check: func(t *testing.T, m Member) {
				if m.Timeline != 0 {
					t.Errorf("Timeline = %d, want 0", m.Timeline)
				}
			}},
		{name: "nofailover false beats failover_priority 0", extra: `"tags":{"nofailover":false,"failover_priority":0}`,
			check: func(t *testing.T, m Member) { wantTags(t, m.Tags, Tags{}) }},
		{name: "nofailover null falls back to failover_priority", extra: `"tags":{"nofailover":null,"failover_priority":-1}`,
			check: func(t *testing.T, m Member) { wantTags(t, m.Tags, Tags{NoFailover: true, FailoverPriority: -1}) }},
		{name: "failover_priority as a string", extra: `"tags":{"failover_priority":"3"}`,
			check: func(t *testing.T, m Member) { wantTags(t, m.Tags, Tags{FailoverPriority: 3}) }},
		{name: "failover_priority unparsable is ignored", extra: `"tags":{"failover_priority":"high"}`,
			check: func(t *testing.T, m Member) { wantTags(t, m.Tags, Tags{}) }},
		{name: "tag truthiness", extra: `"tags":{"nofailover":1,"noloadbalance":"yes"}`,
			check: func(t *testing.T, m Member) { wantTags(t, m.Tags, Tags{NoFailover: true, NoLoadBalance: true}) }},
		{name: "tag falsiness", extra: `"tags":{"nofailover":0,"noloadbalance":""}`,
			check: func(t *testing.T, m Member) { wantTags(t, m.Tags, Tags{}) }},
		{name: "tags not an object", extra: `"tags":"nofailover"`, wantErr: "tags"},
		{name: "role not a string", extra: `"role":5`, wantErr: "role"},
		{name: "conn_url without host", extra: `"conn_url":"postgres:///postgres"`, wantErr: "no host"},
		{name: "conn_url of another scheme", extra: `"conn_url":"http://10.0.0.1:5432/"`, wantErr: "scheme"},
		{name: "conn_url port 0", extra: `"conn_url":"postgres://10.0.0.1:0/postgres"`, wantErr: "out of range"},
		{name: "conn_url with empty port defaults", extra: `"conn_url":"postgres://10.0.0.1:/postgres"`,
			check: func(t *testing.T, m Member) {
				if m.Port != 5432 {
					t.Errorf("Port = %d, want 5432", m.Port)
				}
			}},
		{name: "bad port error hides the password", extra: `"conn_url":"postgres://u:hunter2@10.0.0.1:54x2/postgres"`, wantErr: "invalid port"},
		{name: "missing role", extra: `"role":""`, wantErr: "role is missing"},
		{name: "missing state", extra: `"state":""`, wantErr: "state is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Later duplicates win in encoding/json, so extra may override base.
			m, err := ParsePatroniMember("node1", []byte("{"+base+","+tt.extra+"}"))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error leaks the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, m)
		})
	}
}

func wantLSN(t *testing.T, got, want LSN) {
	t.Helper()
	if got != want {
		t.Errorf("LSN = %v, want %v", got, want)
	}
}

func wantTags(t *testing.T, got, want Tags) {
	t.Helper()
	if got != want {
		t.Errorf("Tags = %+v, want %+v", got, want)
	}
}

func TestPatroniRoleMapping(t *testing.T) {
	tests := []struct {
		name    string
		role    string
		state   string
		want    Role
		wantErr bool
	}{
		{name: "master running", role: "master", state: "running", want: RolePrimary},
		{name: "primary running", role: "primary", state: "running", want: RolePrimary},
		{name: "promoted running", role: "promoted", state: "running", want: RoleStarting},
		{name: "replica running", role: "replica", state: "running", want: RoleReplica},
		{name: "standby_leader running", role: "standby_leader", state: "running", want: RoleReplica},
		{name: "uninitialized running", role: "uninitialized", state: "running", want: RoleStarting},
		{name: "demoted running", role: "demoted", state: "running", want: RoleDemoted},
		{name: "demoted stopped", role: "demoted", state: "stopped", want: RoleDemoted},
		{name: "primary starting", role: "primary", state: "starting", want: RoleStarting},
		{name: "primary restarting", role: "primary", state: "restarting", want: RoleStarting},
		{name: "master starting after custom bootstrap", role: "master", state: "starting after custom bootstrap", want: RoleStarting},
		{name: "primary initializing", role: "primary", state: "initializing new cluster", want: RoleStarting},
		{name: "primary custom bootstrap", role: "primary", state: "running custom bootstrap script", want: RoleStarting},
		{name: "uninitialized creating replica", role: "uninitialized", state: "creating replica", want: RoleStarting},
		{name: "replica starting", role: "replica", state: "starting", want: RoleStarting},
		{name: "primary stopping", role: "primary", state: "stopping", want: RoleStopped},
		{name: "primary stopped", role: "primary", state: "stopped", want: RoleStopped},
		{name: "primary stop failed", role: "primary", state: "stop failed", want: RoleStopped},
		{name: "master crashed", role: "master", state: "crashed", want: RoleStopped},
		{name: "replica start failed", role: "replica", state: "start failed", want: RoleStopped},
		{name: "replica restart failed", role: "replica", state: "restart failed", want: RoleStopped},
		{name: "uninitialized initdb failed", role: "uninitialized", state: "initdb failed", want: RoleStopped},
		{name: "uninitialized custom bootstrap failed", role: "uninitialized", state: "custom bootstrap failed", want: RoleStopped},
		{name: "standby_leader stopped", role: "standby_leader", state: "stopped", want: RoleStopped},
		{name: "promoted crashed", role: "promoted", state: "crashed", want: RoleStopped},
		{name: "pharos role name is not Patroni's", role: "starting", state: "running", wantErr: true},
		{name: "leader is a patronictl role, not a DCS one", role: "leader", state: "running", wantErr: true},
		{name: "role case matters", role: "Primary", state: "running", wantErr: true},
		{name: "missing role", role: "", state: "running", wantErr: true},
		{name: "unknown state", role: "replica", state: "unknown", wantErr: true},
		{name: "streaming state", role: "replica", state: "streaming", wantErr: true},
		{name: "missing state", role: "primary", state: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := patroniRole(tt.role, tt.state)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("patroniRole(%q, %q) = %q, want error", tt.role, tt.state, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("patroniRole(%q, %q) = %q, %v, want %q", tt.role, tt.state, got, err, tt.want)
			}
		})
	}
}

func TestParsePatroniLeader(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    string
		wantErr bool
	}{
		{name: "member name", data: "node1", want: "node1"},
		{name: "host-like name", data: "pg-1.example.com", want: "pg-1.example.com"},
		{name: "empty", data: "", wantErr: true},
		{name: "trailing newline is not trimmed", data: "node1\n", wantErr: true},
		{name: "JSON is not a name", data: `"node1"`, wantErr: true},
		{name: "slash", data: "a/b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePatroniLeader([]byte(tt.data))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParsePatroniLeader(%q) = %q, want error", tt.data, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParsePatroniLeader(%q) = %q, %v, want %q", tt.data, got, err, tt.want)
			}
		})
	}
}

func TestParsePatroniStatus(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    LSN
		wantErr bool
	}{
		{name: "Patroni 4 status", data: string(readFixture(t, "status_v4.json")), want: 134217888},
		{name: "Patroni 3 status", data: string(readFixture(t, "status_v3.json")), want: 83886432},
		{name: "legacy optime/leader", data: "83886432", want: 83886432},
		{name: "legacy fixture with newline", data: string(readFixture(t, "optime_legacy.txt")), want: 83886432},
		{name: "optime as a string", data: `{"optime":"83886432"}`, want: 83886432},
		{name: "optime zero", data: `{"optime":0}`, want: 0},
		{name: "largest optime", data: `{"optime":18446744073709551615}`, want: math.MaxUint64},
		{name: "optime past uint64", data: `{"optime":18446744073709551616}`, wantErr: true},
		{name: "negative optime", data: `{"optime":-1}`, wantErr: true},
		{name: "fractional optime", data: `{"optime":1.5}`, wantErr: true},
		{name: "optime as LSN text", data: `{"optime":"0/5000060"}`, wantErr: true},
		{name: "null optime", data: `{"optime":null}`, wantErr: true},
		{name: "no optime", data: `{"slots":{"a":1}}`, wantErr: true},
		{name: "top-level string", data: `"83886432"`, wantErr: true},
		{name: "top-level array", data: `[83886432]`, wantErr: true},
		{name: "top-level bool", data: `true`, wantErr: true},
		{name: "null", data: `null`, wantErr: true},
		{name: "empty", data: ``, wantErr: true},
		{name: "not JSON", data: `optime`, wantErr: true},
		{name: "trailing garbage", data: `{"optime":1}x`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePatroniStatus([]byte(tt.data))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParsePatroniStatus(%q) = %v, want error", tt.data, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParsePatroniStatus(%q) = %v, %v, want %v", tt.data, got, err, tt.want)
			}
		})
	}
}

func TestPatroniLag(t *testing.T) {
	tests := []struct {
		name   string
		optime LSN
		lsn    LSN
		want   int64
	}{
		{name: "behind", optime: 134217888, lsn: 134216000, want: 1888},
		{name: "caught up", optime: 134217888, lsn: 134217888, want: 0},
		{name: "ahead of a stale optime", optime: 134216000, lsn: 134217888, want: 0},
		{name: "optime unknown", optime: 0, lsn: 134217888, want: -1},
		{name: "member LSN unknown", optime: 134217888, lsn: 0, want: -1},
		{name: "difference past int64 is capped", optime: math.MaxUint64, lsn: 1, want: math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PatroniLag(tt.optime, Member{LSN: tt.lsn}); got != tt.want {
				t.Errorf("PatroniLag(%v, %v) = %d, want %d", tt.optime, tt.lsn, got, tt.want)
			}
		})
	}
}

func FuzzParsePatroniMember(f *testing.F) {
	entries, err := os.ReadDir(filepath.Join("testdata", "patroni"))
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		f.Add("node1", readFixture(f, e.Name()))
	}
	f.Add("node-2", []byte(`{"conn_url":"postgres://[::1]/x","state":"running","role":"primary","tags":{"nofailover":[1]}}`))
	f.Add("n", []byte(`{"conn_url":"postgresql://h:1","state":"restarting","role":"promoted","xlog_location":"7","timeline":"x"}`))
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		m, err := ParsePatroniMember(name, data)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("parsed member does not validate: %v", err)
		}
		if m.Name != name {
			t.Fatalf("Name = %q, want %q", m.Name, name)
		}
		if m.Role == RolePrimary {
			// rw only ever goes where Patroni itself says primary, running.
			var p struct{ Role, State string }
			if err := json.Unmarshal(data, &p); err != nil {
				t.Fatal(err)
			}
			if (p.Role != "master" && p.Role != "primary") || p.State != "running" {
				t.Fatalf("role %q state %q mapped to primary", p.Role, p.State)
			}
		}
		b, err := MarshalMember(m)
		if err != nil {
			t.Fatalf("MarshalMember: %v", err)
		}
		back, err := ParseMember(b)
		if err != nil {
			t.Fatalf("ParseMember(%s): %v", b, err)
		}
		if !reflect.DeepEqual(back, m) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", back, m)
		}
	})
}
