package pgauth

import (
	"fmt"
	"strings"
)

// UserlistEntry is one line of a userlist file as written: the user and
// its secret, not interpreted.
type UserlistEntry struct {
	Line   int
	User   string
	Secret string
}

// ReadUserlist reads an auth_file in PgBouncer's userlist.txt format:
// one role a line, `"user" "secret"`, each field in double quotes with a
// double quote inside written twice; anything after the second field is
// ignored, as PgBouncer does. Empty lines and lines starting with ";" or
// "#" are comments. A user listed twice is an error rather than a silent
// choice between two secrets. The secrets are returned as written.
func ReadUserlist(data string) ([]UserlistEntry, error) {
	var entries []UserlistEntry
	seen := make(map[string]bool)
	for i, line := range strings.Split(data, "\n") {
		lineNo := i + 1
		line = strings.TrimSuffix(line, "\r")
		trimmed := strings.TrimLeft(line, " \t")
		if trimmed == "" || trimmed[0] == ';' || trimmed[0] == '#' {
			continue
		}
		user, rest, err := quotedField(trimmed)
		if err != nil {
			return nil, fmt.Errorf("line %d: user name: %w", lineNo, err)
		}
		rest = strings.TrimLeft(rest, " \t")
		secret, _, err := quotedField(rest)
		if err != nil {
			return nil, fmt.Errorf("line %d: verifier of %q: %w", lineNo, user, err)
		}
		if user == "" {
			return nil, fmt.Errorf("line %d: empty user name", lineNo)
		}
		if seen[user] {
			return nil, fmt.Errorf("line %d: user %q is listed twice", lineNo, user)
		}
		seen[user] = true
		entries = append(entries, UserlistEntry{Line: lineNo, User: user, Secret: secret})
	}
	return entries, nil
}

// ParseUserlist reads a userlist file (ReadUserlist) whose secrets must
// be SCRAM-SHA-256 or md5 verifiers (ParseVerifier); PgBouncer's
// plaintext passwords are refused, so no password is ever held.
func ParseUserlist(data string) (map[string]Verifier, error) {
	entries, err := ReadUserlist(data)
	if err != nil {
		return nil, err
	}
	users := make(map[string]Verifier, len(entries))
	for _, e := range entries {
		v, err := ParseVerifier(e.Secret)
		if err != nil {
			return nil, fmt.Errorf("line %d: user %q: %w", e.Line, e.User, err)
		}
		users[e.User] = v
	}
	return users, nil
}

// quotedField reads one double-quoted field at the start of s, with ""
// standing for one quote, and returns it and what follows the closing
// quote.
func quotedField(s string) (field, rest string, err error) {
	if s == "" || s[0] != '"' {
		return "", "", fmt.Errorf("expected a field in double quotes")
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '"' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '"' {
			b.WriteByte('"')
			i++
			continue
		}
		return b.String(), s[i+1:], nil
	}
	return "", "", fmt.Errorf("unterminated double quote")
}

// FormatUserlistLine writes one userlist line for user and v, quoting as
// ParseUserlist reads it.
func FormatUserlistLine(user string, v Verifier) string {
	q := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	return q(user) + " " + q(v.String()) + "\n"
}
