// Package consolecmd parses the command language of pharos's admin
// console: PgBouncer's console commands, the part of them pharos has a
// meaning for. It is a pure function of the query text (so that it can be
// fuzzed); it must not know the proxy's state or how commands are run,
// which is package proxy's.
package consolecmd

import (
	"fmt"
	"slices"
	"strings"
)

// Verbs.
const (
	Show   = "SHOW"
	Pause  = "PAUSE"
	Resume = "RESUME"
	Reload = "RELOAD"
	Kill   = "KILL"
)

// AdminDatabase is the console's own database, which PAUSE, RESUME and
// KILL do not take.
const AdminDatabase = "pharos"

// ShowSubjects is what SHOW can show.
var ShowSubjects = []string{
	"HELP", "POOLS", "CLIENTS", "SERVERS", "STATS", "STATS_TOTALS", "STATS_AVERAGES",
	"CONFIG", "VERSION", "DATABASES", "LISTS", "STATE",
}

// PgBouncer's commands and SHOW subjects that pharos does not have, so that
// they are told apart from typing errors.
var (
	unsupportedVerbs = []string{"SUSPEND", "SHUTDOWN", "SET", "RECONNECT", "DISABLE", "ENABLE",
		"WAIT_CLOSE", "KILL_CLIENT"}
	unsupportedShows = []string{"FDS", "SOCKETS", "ACTIVE_SOCKETS", "MEM", "DNS_HOSTS", "DNS_ZONES",
		"USERS", "PEERS", "PEER_POOLS", "TOTALS", "PREPARED_STATEMENTS"}
)

// SQLSTATEs of parse errors.
const (
	CodeSyntaxError  = "42601"
	CodeNotSupported = "0A000"
)

// MaxName bounds a database name in a console command, as
// PostgreSQL's NAMEDATALEN does (63 bytes).
const MaxName = 63

// Command is one parsed statement.
type Command struct {
	Verb string // one of the verb constants
	What string // SHOW's subject, upper case
	DB   string // the database argument; "" when none was given
}

// Error is a statement the console refuses, with its SQLSTATE.
type Error struct {
	Code, Message string
}

func (e *Error) Error() string { return e.Message }

func syntaxErrorf(format string, args ...any) *Error {
	return &Error{Code: CodeSyntaxError, Message: "pharos console: " + fmt.Sprintf(format, args...)}
}

// Parse splits a simple Query into statements at semicolons (outside
// double quotes) and parses each. Keywords match in any case; a database
// name keeps its case, as in PgBouncer, and may be double-quoted (a quote
// inside written twice) to hold spaces or semicolons. Empty statements are
// skipped, so a query of only blanks and semicolons gives no command.
func Parse(q string) ([]Command, error) {
	var cmds []Command
	for {
		var toks []string
		var err error
		toks, q, err = tokenizeStatement(q)
		if err != nil {
			return nil, err
		}
		if len(toks) > 0 {
			c, err := parseStatement(toks)
			if err != nil {
				return nil, err
			}
			cmds = append(cmds, c)
		}
		if q == "" {
			return cmds, nil
		}
	}
}

// tokenizeStatement reads words up to the next semicolon (consumed) or the
// end of q, and returns them with the rest of q. A quoted word is returned
// with its leading quote so that parseStatement can tell it from a
// keyword.
func tokenizeStatement(q string) (toks []string, rest string, err error) {
	i := 0
	for i < len(q) {
		c := q[i]
		switch {
		case c == ';':
			return toks, q[i+1:], nil
		case isConsoleSpace(c):
			i++
		case c == '"':
			var b strings.Builder
			b.WriteByte('"')
			j := i + 1
			for {
				if j >= len(q) {
					return nil, "", syntaxErrorf("unterminated quoted name at %q", clip(q[i:]))
				}
				if q[j] == '"' {
					if j+1 < len(q) && q[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					j++
					break
				}
				b.WriteByte(q[j])
				j++
			}
			if b.Len() == 1 {
				return nil, "", syntaxErrorf("zero-length quoted name")
			}
			toks = append(toks, b.String())
			i = j
		default:
			j := i
			for j < len(q) && !isConsoleSpace(q[j]) && q[j] != ';' && q[j] != '"' {
				j++
			}
			toks = append(toks, q[i:j])
			i = j
		}
	}
	return toks, "", nil
}

func isConsoleSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 40
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func keyword(tok string) string {
	if strings.HasPrefix(tok, `"`) {
		return ""
	}
	return strings.ToUpper(tok)
}

func parseStatement(toks []string) (Command, error) {
	verb := keyword(toks[0])
	args := toks[1:]
	if verb == "" {
		return Command{}, syntaxErrorf("a command starts with a keyword, not the quoted name %s; SHOW HELP lists the commands", toks[0])
	}
	c := Command{Verb: verb}
	switch verb {
	case Show:
		if len(args) == 0 {
			return c, syntaxErrorf("SHOW needs a subject: SHOW %s", strings.Join(ShowSubjects, "|"))
		}
		c.What = keyword(args[0])
		switch {
		case slices.Contains(ShowSubjects, c.What):
		case slices.Contains(unsupportedShows, c.What):
			return c, &Error{Code: CodeNotSupported, Message: fmt.Sprintf("pharos console: SHOW %s is not supported (SHOW HELP lists what is)", c.What)}
		default:
			return c, syntaxErrorf("unknown SHOW subject %q: SHOW %s", clip(args[0]), strings.Join(ShowSubjects, "|"))
		}
		if len(args) > 1 {
			return c, syntaxErrorf("unexpected %q after SHOW %s", clip(args[1]), c.What)
		}
		return c, nil
	case Pause, Resume, Kill:
		if len(args) > 1 {
			return c, syntaxErrorf("unexpected %q after %s %s: %s takes at most one database name", clip(args[1]), verb, clip(args[0]), verb)
		}
		if len(args) == 1 {
			db := strings.TrimPrefix(args[0], `"`)
			if len(db) > MaxName {
				return c, syntaxErrorf("database name %q is longer than %d bytes", clip(db), MaxName)
			}
			if db == AdminDatabase {
				return c, &Error{Code: CodeNotSupported, Message: fmt.Sprintf("pharos console: %s does not apply to the admin console's own database %q", verb, AdminDatabase)}
			}
			c.DB = db
		}
		return c, nil
	case Reload:
		if len(args) > 0 {
			return c, syntaxErrorf("unexpected %q after RELOAD", clip(args[0]))
		}
		return c, nil
	}
	if slices.Contains(unsupportedVerbs, verb) {
		return c, &Error{Code: CodeNotSupported, Message: fmt.Sprintf("pharos console: %s is not supported (SHOW HELP lists the commands)", verb)}
	}
	return c, syntaxErrorf("unknown command %q (SHOW HELP lists the commands)", clip(toks[0]))
}
