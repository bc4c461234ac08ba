package pgproc

import (
	"os"
	"strings"
)

// IsSecretEnv reports whether kv (NAME=value, or a bare NAME) is one of
// the variables pharos reads a secret from: PHAROS_*_PASSWORD and
// PHAROS_*_TOKEN. The daemons drop them from their own environment once
// read; the helpers that build a child's environment drop them again, so
// that a secret handed to pharos never reaches PostgreSQL, a callback or
// any other program it starts.
func IsSecretEnv(kv string) bool {
	name, _, _ := strings.Cut(kv, "=")
	return strings.HasPrefix(name, "PHAROS_") &&
		(strings.HasSuffix(name, "_PASSWORD") || strings.HasSuffix(name, "_TOKEN"))
}

// WithoutSecrets returns env without the variables IsSecretEnv names.
func WithoutSecrets(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !IsSecretEnv(kv) {
			out = append(out, kv)
		}
	}
	return out
}

// ChildEnv is the environment for PostgreSQL programs: the caller's,
// without PG* variables that would redirect libpq-based tools nor pharos's
// secrets (IsSecretEnv), in the C locale.
func ChildEnv() []string {
	var env []string
	for _, kv := range WithoutSecrets(os.Environ()) {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}
