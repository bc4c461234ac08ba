package wire

import "strings"

// The StartupMessage's "options" parameter is a command line for the
// backend: PostgreSQL splits it into words (pg_split_opts: at unescaped
// ASCII white space, a backslash escaping the next byte) and parses the
// words with getopt against the switches postgres.c's
// process_postgres_switches knows. Two of them set any setting: -c
// name=value and --name=value, whose name ParseLongOption reads up to the
// first '=' with every '-' turned into '_', and which the server then looks
// up ignoring ASCII case. glibc's getopt, which the server uses on Linux,
// clusters switches ("-Ec name=value" is -E then -c), takes an argument
// from the rest of the word or else from the next word ("-E-" followed by
// "name=value" is --name=value), skips words that are not switches and
// stops at a word "--". A word the server cannot parse fails the session
// (FATAL "invalid command-line argument"), so only what this file keeps can
// reach a live session.

// optionsWithArg are the switches of process_postgres_switches that take
// an argument (getopt string "B:bC:c:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:",
// PostgreSQL 13 to 18). Older servers also had -o with an argument; it is
// included so the split stays right there, and a newer server refuses
// "-o" anyway.
const optionsWithArg = "BCcDdfhkNoprStvW-"

// isOptionSpace is the C library's isspace in the C locale, which
// pg_split_opts splits at.
func isOptionSpace(b byte) bool {
	switch b {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}

// SplitOptions splits an "options" value into words as PostgreSQL's
// pg_split_opts does. A backslash at the very end makes an empty last
// word, as it does there.
func SplitOptions(options string) []string {
	var words []string
	var w []byte
	i := 0
	for i < len(options) {
		for i < len(options) && isOptionSpace(options[i]) {
			i++
		}
		if i == len(options) {
			break
		}
		w = w[:0]
		escaped := false
		for ; i < len(options); i++ {
			c := options[i]
			if isOptionSpace(c) && !escaped {
				break
			}
			if !escaped && c == '\\' {
				escaped = true
				continue
			}
			escaped = false
			w = append(w, c)
		}
		words = append(words, string(w))
	}
	return words
}

// JoinOptions is SplitOptions' inverse: it escapes backslashes and white
// space in each word and joins the words with spaces. An empty word can
// only be represented last (a trailing backslash); elsewhere it is lost.
func JoinOptions(words []string) string {
	var b strings.Builder
	for i, w := range words {
		if i > 0 {
			b.WriteByte(' ')
		}
		if w == "" && i == len(words)-1 {
			b.WriteByte('\\')
			continue
		}
		for j := 0; j < len(w); j++ {
			if c := w[j]; c == '\\' || isOptionSpace(c) {
				b.WriteByte('\\')
			}
			b.WriteByte(w[j])
		}
	}
	return b.String()
}

// SettingNameEqual reports whether two setting names are the same to
// PostgreSQL (guc_name_compare: ASCII letters compare without case, every
// other byte exactly).
func SettingNameEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// setsSetting reports whether arg, the argument of -c or --, names the
// setting name (given in its canonical spelling, without '-').
func setsSetting(arg, name string) bool {
	n, _, _ := strings.Cut(arg, "=")
	// ParseLongOption turns every '-' of the name into '_'.
	n = strings.ReplaceAll(n, "-", "_")
	return SettingNameEqual(n, name)
}

// WithoutOptionSetting returns options without every -c or -- switch that
// sets the setting name (spelled with '_', as the server lists it),
// whatever the case, '-' for '_' and clustering; the other switches and
// words keep their meaning. It reports whether it removed anything; if it
// did not, options is returned as it is.
func WithoutOptionSetting(options, name string) (string, bool) {
	words := SplitOptions(options)
	out := make([]string, 0, len(words))
	changed := false
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == "--" {
			// getopt's end of switches: the rest are plain words, which
			// the server refuses.
			out = append(out, words[i:]...)
			break
		}
		if len(w) < 2 || w[0] != '-' {
			out = append(out, w) // not a switch; getopt steps over it
			continue
		}
		kept, drop := w, false
		for j := 1; j < len(w); j++ {
			if strings.IndexByte(optionsWithArg, w[j]) < 0 {
				continue // a flag, or an unknown switch the server refuses
			}
			// This switch takes the rest of the word, or else the next
			// word, as its argument; either way the word ends here.
			arg, next := w[j+1:], false
			if arg == "" {
				if i+1 == len(words) {
					break // missing argument: the server refuses it
				}
				arg, next = words[i+1], true
			}
			if (w[j] == 'c' || w[j] == '-') && setsSetting(arg, name) {
				changed = true
				kept = w[:j] // the flags clustered before it stay
				drop = kept == "-"
			} else if next {
				out = append(out, kept)
				kept = words[i+1]
			}
			if next {
				i++
			}
			break
		}
		if !drop {
			out = append(out, kept)
		}
	}
	if !changed {
		return options, false
	}
	return JoinOptions(out), true
}

// ForceSetting returns startup parameters in which the server setting name
// (spelled as the server lists it) ends up as value, whatever the client
// sent: parameters naming it in any case are dropped, every switch setting
// it is dropped from each "options" parameter, and name=value is appended
// last. The server applies "options" before the other parameters and
// takes the last of several, so the appended one decides even without the
// rest; dropping the others keeps the server's log and pg_stat_activity
// honest about what the session was given. The input slice is not
// modified.
func ForceSetting(params []Param, name, value string) []Param {
	out := make([]Param, 0, len(params)+1)
	for _, kv := range params {
		if SettingNameEqual(kv.Name, name) {
			continue
		}
		// The server recognises "options" by exact name; any other
		// spelling is an unknown setting it refuses.
		if kv.Name == "options" {
			kv.Value, _ = WithoutOptionSetting(kv.Value, name)
		}
		out = append(out, kv)
	}
	return append(out, Param{Name: name, Value: value})
}
