package consolecmd

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		q    string
		want []Command
	}{
		{"show", "SHOW POOLS", []Command{{Verb: Show, What: "POOLS"}}},
		{"any case and semicolon", "show Clients;", []Command{{Verb: Show, What: "CLIENTS"}}},
		{"blanks around", " \t\nshow\tstats \n;  ", []Command{{Verb: Show, What: "STATS"}}},
		{"several", "SHOW VERSION; RELOAD;PAUSE", []Command{{Verb: Show, What: "VERSION"}, {Verb: Reload}, {Verb: Pause}}},
		{"empty", "", nil},
		{"only semicolons", " ; ;", nil},
		{"database keeps its case", "PAUSE MyDb", []Command{{Verb: Pause, DB: "MyDb"}}},
		{"quoted database", `KILL "my db; ""x"""`, []Command{{Verb: Kill, DB: `my db; "x"`}}},
		{"quoted keyword-looking name", `RESUME "show"`, []Command{{Verb: Resume, DB: "show"}}},
		{"name with punctuation", "resume app-1.prod", []Command{{Verb: Resume, DB: "app-1.prod"}}},
		{"63-byte name", "PAUSE " + strings.Repeat("d", 63), []Command{{Verb: Pause, DB: strings.Repeat("d", 63)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.q)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.q, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.q, got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, q, code, message string
	}{
		{"unknown command", "SELECT 1", CodeSyntaxError, `pharos console: unknown command "SELECT" (SHOW HELP lists the commands)`},
		{"unknown subject", "SHOW ME", CodeSyntaxError, `pharos console: unknown SHOW subject "ME": SHOW ` + strings.Join(ShowSubjects, "|")},
		{"bare SHOW", "SHOW", CodeSyntaxError, "pharos console: SHOW needs a subject: SHOW " + strings.Join(ShowSubjects, "|")},
		{"SHOW with extra", "SHOW POOLS now", CodeSyntaxError, `pharos console: unexpected "now" after SHOW POOLS`},
		{"two databases", "PAUSE a b", CodeSyntaxError, `pharos console: unexpected "b" after PAUSE a: PAUSE takes at most one database name`},
		{"RELOAD with argument", "RELOAD now", CodeSyntaxError, `pharos console: unexpected "now" after RELOAD`},
		{"unterminated quote", `KILL "app`, CodeSyntaxError, `pharos console: unterminated quoted name at "\"app"`},
		{"empty quoted name", `KILL ""`, CodeSyntaxError, "pharos console: zero-length quoted name"},
		{"quoted verb", `"SHOW" POOLS`, CodeSyntaxError, `pharos console: a command starts with a keyword, not the quoted name "SHOW; SHOW HELP lists the commands`},
		{"long name", "PAUSE " + strings.Repeat("d", 64), CodeSyntaxError, `pharos console: database name "` + strings.Repeat("d", 40) + `…" is longer than 63 bytes`},
		{"console's own database", "KILL pharos", CodeNotSupported, `pharos console: KILL does not apply to the admin console's own database "pharos"`},
		{"PgBouncer command pharos lacks", "shutdown", CodeNotSupported, "pharos console: SHUTDOWN is not supported (SHOW HELP lists the commands)"},
		{"PgBouncer SHOW pharos lacks", "SHOW FDS", CodeNotSupported, "pharos console: SHOW FDS is not supported (SHOW HELP lists what is)"},
		{"error in a later statement", "SHOW POOLS; BOGUS", CodeSyntaxError, `pharos console: unknown command "BOGUS" (SHOW HELP lists the commands)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.q)
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q) = %+v, %v; want error %s", tt.q, got, err, tt.code)
			}
			if pe.Code != tt.code || pe.Message != tt.message {
				t.Fatalf("Parse(%q) error = %s %q\nwant %s %q", tt.q, pe.Code, pe.Message, tt.code, tt.message)
			}
		})
	}
}

// format writes commands back as console text, quoting every database.
func format(cmds []Command) string {
	var b strings.Builder
	for _, c := range cmds {
		b.WriteString(c.Verb)
		if c.What != "" {
			b.WriteString(" " + c.What)
		}
		if c.DB != "" {
			b.WriteString(` "` + strings.ReplaceAll(c.DB, `"`, `""`) + `"`)
		}
		b.WriteString(";")
	}
	return b.String()
}

// FuzzParse: Parse never panics, every error has a SQLSTATE and a message,
// and what it accepts it reads back the same once written out again.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"SHOW POOLS", "pause app; resume app", `KILL "a""b"`, "RELOAD;;", "SHOW", `"x`, "shutdown", "PAUSE a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		cmds, err := Parse(q)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Code == "" || pe.Message == "" {
				t.Fatalf("Parse(%q): error without SQLSTATE or message: %v", q, err)
			}
			return
		}
		for _, c := range cmds {
			if !slices.Contains([]string{Show, Pause, Resume, Reload, Kill}, c.Verb) {
				t.Fatalf("Parse(%q): verb %q", q, c.Verb)
			}
			if (c.Verb == Show) != (c.What != "") || (c.What != "" && !slices.Contains(ShowSubjects, c.What)) {
				t.Fatalf("Parse(%q): %+v", q, c)
			}
			if len(c.DB) > MaxName || c.DB == AdminDatabase {
				t.Fatalf("Parse(%q): database %q", q, c.DB)
			}
		}
		again, err := Parse(format(cmds))
		if err != nil || !slices.Equal(again, cmds) {
			t.Fatalf("Parse(%q) = %+v; written back as %q it parses as %+v, %v", q, cmds, format(cmds), again, err)
		}
	})
}
