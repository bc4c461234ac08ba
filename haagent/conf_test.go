package haagent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// confPostgres is a postgres whose data directory holds only what
// `postgres -C` needs to read the configuration back: postgresql.conf
// including pharos.conf, both readable by the server's account.
func confPostgres(t *testing.T) *postgres {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	bin, err := pgproc.FindBinDir(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	owner, err := pgproc.CurrentOwner()
	if err != nil {
		t.Fatal(err)
	}
	// Under os.TempDir, not t.TempDir: the server's account must reach it.
	base, err := os.MkdirTemp("", "pharos-conf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(base, "data")
	if err := owner.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	p := newPostgres(PostgresConfig{Name: "n1", DataDir: data, BinDir: bin, Port: 5433, SuperUser: "postgres",
		ReplicationUser: "repl", Owner: owner}, slog.New(slog.DiscardHandler))
	if err := p.writeOwned("postgresql.conf", "include_if_exists = '"+confFile+"'\n"); err != nil {
		t.Fatal(err)
	}
	return p
}

// show is the value PostgreSQL reads for name from the data directory.
func (p *postgres) show(t *testing.T, name string) string {
	t.Helper()
	cmd := p.command(t.Context(), nil, "postgres", "-D", p.cfg.DataDir, "-C", name)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("postgres -C %s: %v\npharos.conf:\n%s", name, err, readFile(t, p.path(confFile)))
	}
	return strings.TrimSuffix(string(out), "\n")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestWriteConfRefusesSmuggledSettings writes pharos.conf from hostile
// dynamic parameters (what a writer of the config key can put there) and
// has PostgreSQL itself read it back: none changes a setting the agent
// owns or adds one.
func TestWriteConfRefusesSmuggledSettings(t *testing.T) {
	p := confPostgres(t)
	evil := filepath.Join(filepath.Dir(p.cfg.DataDir), "evil.conf")
	if err := os.WriteFile(evil, []byte("port = 6001\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		param, val string
		show, want string // what PostgreSQL must read: the agent's value or the default
	}{
		{"an assignment in the name", "port '6001' #", "x", "port", "5433"},
		{"a protected name in capitals", "PORT", "6001", "port", "5433"},
		{"a protected name in mixed case", "Listen_Addresses", "*", "listen_addresses", "127.0.0.1"},
		{"an include directive", "include", evil, "port", "5433"},
		{"an include directive in capitals", "INCLUDE_IF_EXISTS", evil, "port", "5433"},
		{"another pg_hba.conf", "hba_file", evil, "hba_file", ""},
		// The backslash once escaped the doubled quote, closing the string
		// before the line feed.
		{"a line feed after an escaped quote", "syslog_ident", "pg\\'\nport = 6001 #", "port", "5433"},
		{"a line feed in a value", "work_mem", "1MB\nport = '6001'", "work_mem", "4096"},
		{"a carriage return in a value", "work_mem", "1MB\rport = '6001'", "work_mem", "4096"},
		{"a NUL in a value", "work_mem", "2MB\x00", "work_mem", "4096"},
		{"a value ending in a backslash", "archive_command", `cp %p /arch/%f \`, "archive_command", `cp %p /arch/%f \`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := p.writeConf(serverConf{Dynamic: map[string]string{tt.param: tt.val}}); err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if tt.show == "hba_file" {
				want = p.path("pg_hba.conf")
			}
			if got := p.show(t, tt.show); got != want {
				t.Errorf("%s = %q, want %q", tt.show, got, want)
			}
		})
	}
}

// TestWriteConfKeepsRealSettings: what operators set reaches PostgreSQL
// byte for byte, quotes and backslashes included, extension parameters
// too, and the local layer overrides the dynamic one whatever the
// spelling.
func TestWriteConfKeepsRealSettings(t *testing.T) {
	p := confPostgres(t)
	archive := `test ! -f '/arch/%f' && cp "%p" /arch/%f \`
	dynamic := map[string]string{
		"archive_command":          archive,
		"restore_command":          `copy "C:\\server\\%f" "%p"`,
		"pg_stat_statements.max":   "10000",
		"shared_preload_libraries": "pg_stat_statements",
		"Effective_Cache_Size":     "1GB",
	}
	p.cfg.Parameters = map[string]string{"effective_cache_size": "2GB"}
	if err := p.writeConf(serverConf{Dynamic: dynamic}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"archive_command":          archive,
		"restore_command":          `copy "C:\\server\\%f" "%p"`,
		"pg_stat_statements.max":   "10000",
		"shared_preload_libraries": "pg_stat_statements",
		"effective_cache_size":     "262144", // 8 kB blocks: 2GB
		"port":                     "5433",
	} {
		if got := p.show(t, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// TestPrimaryConninfoQuotesHostileHost: were a forged member record's host
// to reach primary_conninfo (the record parser refuses it first), it stays
// one value as libpq reads it back from PostgreSQL: no keyword gets in.
func TestPrimaryConninfoQuotesHostileHost(t *testing.T) {
	p := confPostgres(t)
	p.cfg.ReplicationUser = `re'pl\`
	up := cluster.Member{Name: "n2", Host: "10.9.9.9\vsslmode=disable", Port: 6000}
	if err := p.writeConf(serverConf{Standby: true, Upstream: &up}); err != nil {
		t.Fatal(err)
	}
	cc, err := pgconn.ParseConfig(p.show(t, "primary_conninfo"))
	if err != nil {
		t.Fatal(err)
	}
	if cc.Host != up.Host || cc.Port != 6000 || cc.User != p.cfg.ReplicationUser || cc.TLSConfig == nil {
		t.Errorf("primary_conninfo read as host %q port %d user %q TLS %v; want host %q port 6000 user %q, TLS kept",
			cc.Host, cc.Port, cc.User, cc.TLSConfig != nil, up.Host, p.cfg.ReplicationUser)
	}
	if cc.RuntimeParams["application_name"] != "n1" {
		t.Errorf("application_name %q", cc.RuntimeParams["application_name"])
	}
}

func TestMemberConnStringQuotesHostileHost(t *testing.T) {
	p := testPostgres(t)
	m := cluster.Member{Name: "n2", Host: "10.9.9.9\vsslmode=disable", Port: 6000}
	cc, err := pgconn.ParseConfig(p.memberConnString(m))
	if err != nil {
		t.Fatal(err)
	}
	if cc.Host != m.Host || cc.Port != 6000 || cc.TLSConfig == nil || cc.Database != "postgres" {
		t.Errorf("member conninfo read as host %q port %d TLS %v db %q; want host %q, TLS kept",
			cc.Host, cc.Port, cc.TLSConfig != nil, cc.Database, m.Host)
	}
}

// FuzzMemberConnString: any host a member record may carry, and any user
// name, come back from the member conninfo as exactly themselves.
func FuzzMemberConnString(f *testing.F) {
	for _, s := range [][2]string{{"10.0.0.1", "postgres"}, {"fe80::1%eth0", `a'b\`}, {"db-1.example.", "x y=z"}} {
		f.Add(s[0], s[1])
	}
	p := &postgres{cfg: PostgresConfig{}}
	f.Fuzz(func(t *testing.T, host, user string) {
		if cluster.CheckHost(host) != nil || user == "" || strings.ContainsRune(user, 0) {
			return
		}
		p.cfg.SuperUser = user
		cc, err := pgconn.ParseConfig(p.memberConnString(cluster.Member{Host: host, Port: 5432}))
		if err != nil {
			t.Fatalf("host %q user %q: %v", host, user, err)
		}
		if cc.Host != host || cc.Port != 5432 || cc.User != user || cc.Database != "postgres" || cc.TLSConfig == nil {
			t.Fatalf("host %q user %q read back as host %q port %d user %q db %q", host, user, cc.Host, cc.Port, cc.User, cc.Database)
		}
	})
}

// TestDCSReadSkipsForgedMemberHost: a member record in etcd whose host
// would smuggle a conninfo keyword is not among the members the agent
// clones, rewinds or streams from.
func TestDCSReadSkipsForgedMemberHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cli := testEtcd(t)
	keys, _ := cluster.NewKeys("forged")
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	put := func(name, host string) {
		t.Helper()
		rec := `{"name":"` + name + `","role":"primary","host":` + strconv.Quote(host) + `,"port":5432}`
		if _, err := cli.Put(ctx, keys.Member(name), rec, clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	put("forged", "10.9.9.9\vsslmode=disable")
	put("spaced", "10.9.9.9 sslmode=disable")
	put("honest", "pg-node-1.example")
	d := &dcs{cli: cli, keys: keys, name: "n1", ttl: 4 * time.Second}
	s, err := d.read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Members["forged"]; ok {
		t.Error("the record with a vertical tab and sslmode=disable in its host was read")
	}
	if _, ok := s.Members["spaced"]; ok {
		t.Error("the record with a space and sslmode=disable in its host was read")
	}
	if m, ok := s.Members["honest"]; !ok || m.Host != "pg-node-1.example" {
		t.Errorf("the honest record: %+v, %v", m, ok)
	}
}

// TestRenderConf: pharos.conf is a function of its inputs alone, layered
// as documented, with what it leaves out said.
func TestRenderConf(t *testing.T) {
	base := confInputs{Listen: "127.0.0.1", Port: 5433, SocketDir: "/run/pg", Name: "n2"}
	with := func(f func(*confInputs)) confInputs { in := base; f(&in); return in }
	for _, tc := range []struct {
		name    string
		in      confInputs
		want    []string // lines that must be there
		notWant []string // lines that must not
		ignored []string // names left out, in order
	}{
		{"primary defaults", base,
			[]string{"port = '5433'", "cluster_name = 'n2'", "primary_conninfo = ''", "primary_slot_name = ''", "synchronous_standby_names = ''"},
			[]string{"# upstream:"}, nil},
		{"standby of n1", with(func(in *confInputs) { in.Upstream, in.PrimaryConninfo = "n1", "host=10.0.0.1 port=5432" }),
			[]string{"# upstream: n1", "primary_conninfo = 'host=10.0.0.1 port=5432'", "primary_slot_name = 'n2'"}, nil, nil},
		{"synchronous standbys", with(func(in *confInputs) { in.SyncNames = []string{"n1", "n3"} }),
			[]string{`synchronous_standby_names = 'FIRST 2 ("n1", "n3")'`}, nil, nil},
		{"any standby", with(func(in *confInputs) { in.SyncNames = []string{"*"} }),
			[]string{"synchronous_standby_names = 'FIRST 1 (*)'"}, nil, nil},
		{"local overrides dynamic whatever the spelling", with(func(in *confInputs) {
			in.Dynamic = map[string]string{"Work_Mem": "8MB", "shared_buffers": "1GB"}
			in.Local = map[string]string{"work_mem": "16MB"}
		}), []string{"work_mem = '16MB'", "shared_buffers = '1GB'"}, []string{"work_mem = '8MB'"}, nil},
		{"protected and malformed parameters are left out", with(func(in *confInputs) {
			in.Dynamic = map[string]string{"port": "6000", "work_mem": "1MB\nport = 6001", "primary_conninfo": "host=evil"}
		}), []string{"port = '5433'", "primary_conninfo = ''"}, []string{"6000", "6001", "evil"}, []string{"port", "primary_conninfo", "work_mem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text, ignored := renderConf(tc.in)
			again, _ := renderConf(tc.in)
			if again != text {
				t.Fatal("renderConf is not deterministic")
			}
			lines := strings.Split(text, "\n")
			for _, w := range tc.want {
				if !slices.Contains(lines, w) {
					t.Errorf("missing line %q in\n%s", w, text)
				}
			}
			for _, nw := range tc.notWant {
				if strings.Contains(text, nw) {
					t.Errorf("%q in\n%s", nw, text)
				}
			}
			var names []string
			for _, ig := range ignored {
				names = append(names, ig.name)
			}
			if !slices.Equal(names, tc.ignored) {
				t.Errorf("ignored %v, want %v", names, tc.ignored)
			}
		})
	}
}
