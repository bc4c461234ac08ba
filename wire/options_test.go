package wire_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/pharos-ha/pharos/wire"
)

const dtro = "default_transaction_read_only"

func TestSplitOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"only space", " \t\n\v\f\r ", nil},
		{"words", "  -c a=b\t-E  ", []string{"-c", "a=b", "-E"}},
		{"escaped space", `-c search_path=a\ b`, []string{"-c", "search_path=a b"}},
		{"escaped backslash", `-c x=a\\b`, []string{"-c", `x=a\b`}},
		{"escaped ordinary byte", `-c x=\a`, []string{"-c", "x=a"}},
		{"trailing backslash is an empty word", `-c \`, []string{"-c", ""}},
		{"non-ASCII is not space", "-c\u00a0x=y", []string{"-c\u00a0x=y"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := wire.SplitOptions(tc.in)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("SplitOptions(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if again := wire.SplitOptions(wire.JoinOptions(got)); !slices.Equal(again, got) {
				t.Fatalf("JoinOptions does not round-trip: %q → %q → %q", got, wire.JoinOptions(got), again)
			}
		})
	}
}

func TestWithoutOptionSetting(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want string // == in when nothing is to be removed
	}{
		{"empty", "", ""},
		{"other settings untouched, byte for byte", "  -c search_path=x   -c  work_mem=64MB ", "  -c search_path=x   -c  work_mem=64MB "},
		{"-c then the value", "-c " + dtro + "=off", ""},
		{"-c attached", "-c" + dtro + "=off", ""},
		{"long form", "--" + dtro + "=off", ""},
		{"long form with dashes", "--default-transaction-read-only=off", ""},
		{"mixed case and dashes", "-c DEFAULT-Transaction_READ-only=off", ""},
		{"without a value", "-c " + dtro, ""},
		{"empty value", "-c " + dtro + "=", ""},
		{"among others, order kept", "-c search_path=x -c " + dtro + "=off --work-mem=1MB", "-c search_path=x --work-mem=1MB"},
		{"every occurrence", "-c " + dtro + "=off -c" + dtro + "=off --" + dtro + "=off", ""},
		{"clustered after flags, value attached", "-Ec" + dtro + "=off", "-E"},
		{"clustered after flags, value next", "-Eec " + dtro + "=off -c a=b", "-Ee -c a=b"},
		{"long form clustered, value next", "-E- " + dtro + "=off", "-E"},
		{"escaped space inside kept words", `-c search_path=a\ b -c ` + dtro + `=off`, `-c search_path=a\ b`},
		{"escaped backslash inside kept words", `-c x=a\\b -c ` + dtro + `=off`, `-c x=a\\b`},
		{"escaped space between -c and the name", `-c\ ` + dtro + `=off`, `-c\ ` + dtro + `=off`}, // name " default…": not the setting
		{"escape inside the name", `-c default_transaction\_read_only=off`, ""},
		{"a switch's argument is not a switch", "-B -c" + dtro + "=off", "-B -c" + dtro + "=off"},
		{"argument taken from the rest of the word", "-Bc" + dtro + "=off", "-Bc" + dtro + "=off"},
		{"-c takes the next word even if it looks like a switch", "-c -c" + dtro + "=off", "-c -c" + dtro + "=off"},
		{"after a plain word", "x -c " + dtro + "=off", "x"},
		{"after --, plain words", "-- -c " + dtro + "=off", "-- -c " + dtro + "=off"},
		{"a longer name is another setting", "-c " + dtro + "s=off -c x" + dtro + "=on", "-c " + dtro + "s=off -c x" + dtro + "=on"},
		{"transaction_read_only is another setting", "-c transaction_read_only=off", "-c transaction_read_only=off"},
		{"not ASCII case folding", "-c default_tran\u017faction_read_only=off", "-c default_tran\u017faction_read_only=off"},
		{"missing argument stays", "-E -c", "-E -c"},
		{"empty last word kept", "-c " + dtro + "=off -B \\", "-B \\"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, changed := wire.WithoutOptionSetting(tc.in, dtro)
			if got != tc.want {
				t.Fatalf("WithoutOptionSetting(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if changed != (tc.in != tc.want) {
				t.Errorf("changed = %v", changed)
			}
			if again, changed := wire.WithoutOptionSetting(got, dtro); changed || again != got {
				t.Errorf("second pass changed %q to %q", got, again)
			}
		})
	}
}

func TestForceSetting(t *testing.T) {
	in := []wire.Param{
		{"user", "alice"},
		{dtro, "off"},
		{"options", "-c " + dtro + "=off -c search_path=x"},
		{"DEFAULT_TRANSACTION_READ_ONLY", "off"},
		{"Default_Transaction_Read_Only", "off"},
		{"default-transaction-read-only", "off"}, // no such setting: the server refuses it
		{"OPTIONS", "-c " + dtro + "=off"},       // no such setting either
		{"application_name", "x"},
	}
	orig := slices.Clone(in)
	got := wire.ForceSetting(in, dtro, "on")
	want := []wire.Param{
		{"user", "alice"},
		{"options", "-c search_path=x"},
		{"default-transaction-read-only", "off"},
		{"OPTIONS", "-c " + dtro + "=off"},
		{"application_name", "x"},
		{dtro, "on"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("ForceSetting = %q,\nwant %q", got, want)
	}
	if !slices.Equal(in, orig) {
		t.Errorf("input modified: %q", in)
	}
	if got := wire.ForceSetting(nil, dtro, "on"); !slices.Equal(got, []wire.Param{{dtro, "on"}}) {
		t.Errorf("ForceSetting(nil) = %q", got)
	}
}

// optToken is one thing getopt returns for an options word list: a switch
// (opt != 0, with its argument when it takes one) or a plain word.
type optToken struct {
	opt    byte
	arg    string
	hasArg bool
	plain  string
}

// getoptTokens is a reference for the fuzz target, written apart from the
// code under test: glibc getopt over the server's switch string, stepping
// over plain words, stopping at "--".
func getoptTokens(words []string) []optToken {
	const optstring = "B:bC:c:D:d:EeFf:h:ijk:lN:nOo:Pp:r:S:sTt:v:W:-:"
	takesArg := func(c byte) bool {
		i := strings.IndexByte(optstring, c)
		return i >= 0 && i+1 < len(optstring) && optstring[i+1] == ':'
	}
	var toks []optToken
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == "--" {
			for _, rest := range words[i+1:] {
				toks = append(toks, optToken{plain: rest})
			}
			return toks
		}
		if len(w) < 2 || w[0] != '-' {
			toks = append(toks, optToken{plain: w})
			continue
		}
		for pos := 1; pos < len(w); pos++ {
			c := w[pos]
			if c == ':' || !takesArg(c) {
				toks = append(toks, optToken{opt: c})
				continue
			}
			switch {
			case pos+1 < len(w):
				toks = append(toks, optToken{opt: c, arg: w[pos+1:], hasArg: true})
			case i+1 < len(words):
				i++
				toks = append(toks, optToken{opt: c, arg: words[i], hasArg: true})
			default:
				toks = append(toks, optToken{opt: c}) // missing argument
			}
			break
		}
	}
	return toks
}

func isForbidden(tok optToken) bool {
	if (tok.opt != 'c' && tok.opt != '-') || !tok.hasArg {
		return false
	}
	name, _, _ := strings.Cut(tok.arg, "=")
	return strings.EqualFold(strings.ReplaceAll(name, "-", "_"), dtro) && isASCII(name)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// FuzzWithoutOptionSetting: whatever the options, the result sets the
// protected setting nowhere, and what getopt makes of everything else is
// what it made of it before, in the same order.
func FuzzWithoutOptionSetting(f *testing.F) {
	for _, s := range []string{
		"", "-c " + dtro + "=off", "-c" + dtro + "=off", "--" + dtro + "=off", "--default-transaction-read-only=off",
		"-Ec " + dtro + "=off", "-E- " + dtro + "=off", "-B -c" + dtro + "=off", `-c search_path=a\ b -c ` + dtro + `=off \`,
		"x -c " + dtro + "=off", "-- -c " + dtro + "=off", "-c DEFAULT_TRANSACTION_READ_ONLY=off -c search_path=x",
		"-c -c " + dtro + "=off", "-c\t" + dtro + "=off\n-c\v" + dtro + "=on",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, changed := wire.WithoutOptionSetting(in, dtro)
		if !changed && out != in {
			t.Fatalf("unchanged, but %q became %q", in, out)
		}
		before := getoptTokens(wire.SplitOptions(in))
		after := getoptTokens(wire.SplitOptions(out))
		want := slices.DeleteFunc(slices.Clone(before), isForbidden)
		if changed == (len(want) == len(before)) {
			t.Fatalf("changed = %v, but the input has %d forbidden switches", changed, len(before)-len(want))
		}
		if !slices.Equal(after, want) {
			t.Fatalf("options %q → %q\ngetopt before: %+v\ngetopt after:  %+v\nwant:          %+v", in, out, before, after, want)
		}
		if again, changed := wire.WithoutOptionSetting(out, dtro); changed || again != out {
			t.Fatalf("second pass changed %q to %q", out, again)
		}
	})
}
