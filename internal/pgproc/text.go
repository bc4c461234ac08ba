package pgproc

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// The text pharos hands PostgreSQL: values in a libpq connection string
// and literals and statements in SQL, quoted so that nothing in a value (a
// host from a member record, a user name, a password) can end it and start
// another keyword or statement.

// QuoteConninfo quotes v as a libpq keyword/value connection string value:
// always in single quotes, with backslashes and single quotes escaped by a
// backslash.
func QuoteConninfo(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// QuoteLiteral quotes s as an SQL string literal (standard_conforming_strings
// on, PostgreSQL's default since 9.1: only the quote is doubled).
func QuoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// CreateRoleSQL is the statement that creates role name WITH attrs (such
// as "LOGIN" or "REPLICATION LOGIN"; written as given, so never from
// input), with password when it is not empty (a SCRAM verifier, or a
// password the server stores as password_encryption says), and a member of
// inRole when that is not empty.
func CreateRoleSQL(name, attrs, password, inRole string) string {
	stmt := "CREATE ROLE " + pgx.Identifier{name}.Sanitize() + " WITH " + attrs
	// PASSWORD comes before IN ROLE, which takes the rest of the
	// statement as its list.
	if password != "" {
		stmt += " PASSWORD " + QuoteLiteral(password)
	}
	if inRole != "" {
		stmt += " IN ROLE " + pgx.Identifier{inRole}.Sanitize()
	}
	return stmt
}
