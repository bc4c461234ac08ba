package pgauth

import (
	"fmt"
	"strings"
)

// ParseUserlist reads an auth_file in PgBouncer's userlist.txt format:
// one role a line, `"user" "verifier"`, each field in double quotes with a
// double quote inside written twice; anything after the second field is
// ignored, as PgBouncer does. Empty lines and lines starting with ";" or
// "#" are comments. The verifier must be a SCRAM-SHA-256 or md5 one
// (ParseVerifier); PgBouncer's plaintext passwords are refused, so no
// password is ever held. A user listed twice is an error rather than a
// silent choice between two secrets.
func ParseUserlist(data string) (map[string]Verifier, error) {
	users := make(map[string]Verifier)
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
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("line %d: user %q is listed twice", lineNo, user)
		}
		v, err := ParseVerifier(secret)
		if err != nil {
			return nil, fmt.Errorf("line %d: user %q: %w", lineNo, user, err)
		}
		users[user] = v
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
