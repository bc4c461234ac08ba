package pgauth

import (
	"strings"
	"testing"
)

const (
	testSCRAM = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
	testMD5   = "md53175bce1d3201d16594cebf9d7eb3f9d"
)

func TestParseUserlist(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]string // user -> verifier text
		wantErr string
	}{
		{name: "empty", in: "", want: map[string]string{}},
		{name: "scram and md5", in: `"alice" "` + testSCRAM + `"` + "\n" + `"postgres" "` + testMD5 + `"` + "\n",
			want: map[string]string{"alice": testSCRAM, "postgres": testMD5}},
		{name: "comments, blank lines, CRLF, indentation", in: "; comment\n# another\n\n  \"bob\"  \"" + testMD5 + "\"\r\n",
			want: map[string]string{"bob": testMD5}},
		{name: "rest of the line ignored", in: `"bob" "` + testMD5 + `" "extra" junk`, want: map[string]string{"bob": testMD5}},
		{name: "doubled quote", in: `"a""b" "` + testMD5 + `"`, want: map[string]string{`a"b`: testMD5}},
		{name: "spaces in a name", in: `"a b" "` + testMD5 + `"`, want: map[string]string{"a b": testMD5}},
		{name: "unquoted user", in: `bob "` + testMD5 + `"`, wantErr: "line 1: user name: expected a field in double quotes"},
		{name: "missing verifier", in: `"bob"`, wantErr: `line 1: verifier of "bob": expected a field`},
		{name: "unterminated", in: `"bob" "md5`, wantErr: "unterminated double quote"},
		{name: "plaintext password", in: `"bob" "secret"`, wantErr: "plaintext passwords are not accepted"},
		{name: "md5 too short", in: `"bob" "md5abc"`, wantErr: "not a SCRAM-SHA-256 or md5 verifier"},
		{name: "md5 upper case", in: `"bob" "md53175BCE1D3201D16594CEBF9D7EB3F9D"`, wantErr: "not a SCRAM-SHA-256 or md5 verifier"},
		{name: "scram short key", in: `"bob" "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA"`, wantErr: "StoredKey"},
		{name: "scram zero iterations", in: `"bob" "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$x:y"`, wantErr: "invalid iteration count"},
		{name: "scram iterations with sign", in: `"bob" "SCRAM-SHA-256$+4096:W22ZaJ0SNY7soEsUEjb6gQ==$x:y"`, wantErr: "invalid iteration count"},
		{name: "scram bad salt", in: `"bob" "SCRAM-SHA-256$4096:!!$x:y"`, wantErr: "invalid salt"},
		{name: "duplicate", in: `"bob" "` + testMD5 + `"` + "\n" + `"bob" "` + testSCRAM + `"`, wantErr: `line 2: user "bob" is listed twice`},
		{name: "empty user", in: `"" "` + testMD5 + `"`, wantErr: "empty user name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseUserlist(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d users, want %d", len(got), len(tt.want))
			}
			for u, v := range tt.want {
				if got[u].String() != v {
					t.Errorf("%s: %q, want %q", u, got[u].String(), v)
				}
			}
		})
	}
}

func TestRFCVerifierText(t *testing.T) {
	// The RFC 7677 password's verifier, as PostgreSQL would print it.
	if got := rfcVerifier(t).String(); got != testSCRAM {
		t.Errorf("verifier = %s, want %s", got, testSCRAM)
	}
}

// FuzzParseUserlist: the parser never panics, and what it accepts comes
// back the same through FormatUserlistLine.
func FuzzParseUserlist(f *testing.F) {
	f.Add(`"alice" "` + testSCRAM + `"` + "\n" + `"post""gres" "` + testMD5 + `" x`)
	f.Add("; c\n\"a\" \"md5\n")
	f.Add(`"bob" "SCRAM-SHA-256$1:AA==$` + strings.Repeat("A", 43) + `=:` + strings.Repeat("A", 43) + `="`)
	f.Fuzz(func(t *testing.T, in string) {
		users, err := ParseUserlist(in)
		if err != nil {
			return
		}
		var b strings.Builder
		for u, v := range users {
			if u == "" || (v.Kind != KindSCRAM && v.Kind != KindMD5) {
				t.Fatalf("accepted user %q with kind %v", u, v.Kind)
			}
			b.WriteString(FormatUserlistLine(u, v))
		}
		again, err := ParseUserlist(b.String())
		if err != nil {
			t.Fatalf("formatted userlist does not parse: %v\n%s", err, b.String())
		}
		for u, v := range users {
			if again[u].String() != v.String() {
				t.Fatalf("%q: %q became %q", u, v.String(), again[u].String())
			}
		}
	})
}

// FuzzServerExchange: any client messages are refused or accepted without
// a panic, and a proof is only accepted for the right key.
func FuzzServerExchange(f *testing.F) {
	f.Add(rfcClientFirst, rfcClientFinal)
	f.Add("y,,n=,r=x", "c=eSws,r=x"+rfcServerNonce+",p=AAAA")
	f.Fuzz(func(t *testing.T, first, final string) {
		v := Verifier{Kind: KindSCRAM, Iterations: 4096, Salt: []byte("salt")}
		e := NewServerExchange(v, false, rfcServerNonce)
		if _, err := e.ClientFirst([]byte(first)); err != nil {
			return
		}
		if _, _, err := e.ClientFinal([]byte(final)); err == nil {
			t.Fatalf("a proof passed against an all-zero StoredKey")
		}
	})
}

func TestReadUserlistKeepsSecrets(t *testing.T) {
	got, err := ReadUserlist("\"alice\" \"plain pw\"\n; comment\n\"bo\"\"b\" \"md5" + strings.Repeat("a", 32) + "\" trailing\n")
	if err != nil {
		t.Fatal(err)
	}
	want := []UserlistEntry{{1, "alice", "plain pw"}, {3, `bo"b`, "md5" + strings.Repeat("a", 32)}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if _, err := ParseUserlist("\"alice\" \"plain pw\"\n"); err == nil {
		t.Errorf("ParseUserlist accepted a plaintext password")
	}
}
