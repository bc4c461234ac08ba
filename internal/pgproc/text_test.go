package pgproc

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// conninfoUser parses "user=" + QuoteConninfo(v) as libpq's syntax (pgconn
// follows it) and returns the user it names and every other setting that
// does not come from the defaults.
func conninfoUser(t *testing.T, v string) (string, *pgconn.Config) {
	t.Helper()
	cfg, err := pgconn.ParseConfig("host=127.0.0.1 user=" + QuoteConninfo(v) + " dbname=d")
	if err != nil {
		t.Fatalf("ParseConfig of %q: %v", QuoteConninfo(v), err)
	}
	return cfg.User, cfg
}

func TestQuoteConninfo(t *testing.T) {
	for name, v := range map[string]string{
		"plain":              "postgres",
		"empty":              "",
		"space":              "a b",
		"quote":              "it's",
		"backslash":          `C:\x`,
		"trailing backslash": `x\`,
		"keyword smuggled":   "x' password='stolen' host='evil",
		"equals":             "a=b",
	} {
		t.Run(name, func(t *testing.T) {
			got, cfg := conninfoUser(t, v)
			if got != v && v != "" { // an empty user is the default one
				t.Errorf("user %q came back as %q", v, got)
			}
			if cfg.Password != "" || cfg.Host != "127.0.0.1" || cfg.Database != "d" {
				t.Errorf("value %q changed another setting: password %q host %q dbname %q", v, cfg.Password, cfg.Host, cfg.Database)
			}
		})
	}
}

func FuzzQuoteConninfo(f *testing.F) {
	for _, s := range []string{"postgres", "", "it's", `C:\`, "x' host='y", "a b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if strings.ContainsRune(v, 0) {
			t.Skip("a conninfo cannot hold NUL")
		}
		got, cfg := conninfoUser(t, v)
		if (got != v && v != "") || cfg.Password != "" || cfg.Database != "d" {
			t.Fatalf("user %q came back as %q (password %q, dbname %q)", v, got, cfg.Password, cfg.Database)
		}
	})
}

func TestQuoteLiteral(t *testing.T) {
	for v, want := range map[string]string{
		"abc":            `'abc'`,
		"":               `''`,
		"it's":           `'it''s'`,
		`x\'; DROP x --`: `'x\''; DROP x --'`,
	} {
		if got := QuoteLiteral(v); got != want {
			t.Errorf("QuoteLiteral(%q) = %s, want %s", v, got, want)
		}
	}
}

func TestCreateRoleSQL(t *testing.T) {
	for name, c := range map[string]struct {
		role, attrs, password, inRole, want string
	}{
		"no password": {"replicator", "REPLICATION LOGIN", "", "",
			`CREATE ROLE "replicator" WITH REPLICATION LOGIN`},
		"password": {"app", "LOGIN", "pw'1", "",
			`CREATE ROLE "app" WITH LOGIN PASSWORD 'pw''1'`},
		"member, password first": {"health", "LOGIN", "SCRAM-SHA-256$x", "pg_monitor",
			`CREATE ROLE "health" WITH LOGIN PASSWORD 'SCRAM-SHA-256$x' IN ROLE "pg_monitor"`},
		"odd name": {`we"ird`, "LOGIN", "", "", `CREATE ROLE "we""ird" WITH LOGIN`},
	} {
		if got := CreateRoleSQL(c.role, c.attrs, c.password, c.inRole); got != c.want {
			t.Errorf("%s: %s, want %s", name, got, c.want)
		}
	}
}
