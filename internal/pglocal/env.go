package pglocal

import "strings"

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
