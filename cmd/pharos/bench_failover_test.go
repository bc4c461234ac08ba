package main

import (
	"strings"
	"testing"
)

func TestBenchFailoverFlags(t *testing.T) {
	const dsn = "host=127.0.0.1 port=1 user=x dbname=x"
	ok := []string{"--dsn", dsn, "--fault", "true"}
	for _, tc := range []struct {
		name string
		args []string
		key  string // the one line must name it
	}{
		{"no dsn", []string{"--fault", "true"}, "--dsn"},
		{"no fault", []string{"--dsn", dsn}, "--fault"},
		{"empty fault", []string{"--dsn", dsn, "--fault="}, "--fault"},
		{"unparsable dsn", []string{"--dsn", "host=h port=notaport", "--fault", "true"}, "--dsn"},
		{"unparsable check dsn", append(ok, "--check-dsn", "port=notaport"), "--check-dsn"},
		{"empty table", append(ok, "--table="), "--table"},
		{"zero interval", append(ok, "--interval", "0s"), "--interval"},
		{"negative timeout", append(ok, "--timeout", "-1s"), "--timeout"},
		{"zero before", append(ok, "--before", "0"), "--before"},
		{"zero after", append(ok, "--after", "0s"), "--after"},
		{"zero settle", append(ok, "--settle", "0s"), "--settle"},
		{"malformed duration", append(ok, "--settle", "soon"), "-settle"},
		{"unknown flag", append(ok, "--bogus"), "-bogus"},
		{"unquoted fault command", []string{"--dsn", dsn, "--fault", "pg_ctl", "stop"}, `"stop"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantUsageLine(t, tc.key, append([]string{"bench", "failover"}, tc.args...)...)
		})
	}

	t.Run("a password in a bad dsn is not echoed", func(t *testing.T) {
		code, stderr := runCmd(t, "bench", "failover", "--fault", "true", "--dsn", "postgres://u:s3cret@h:notaport/db")
		if code != exitUsage || strings.Contains(stderr, "s3cret") || !strings.Contains(stderr, "--dsn") {
			t.Errorf("exit %d, stderr %q; want %d naming --dsn without the password", code, stderr, exitUsage)
		}
	})

	t.Run("help", func(t *testing.T) {
		code, stderr := runCmd(t, "bench", "failover", "-h")
		if code != exitOK || !strings.Contains(stderr, "-fault") || !strings.Contains(stderr, "-check-dsn") {
			t.Errorf("exit %d, stderr %q; want %d and the flags", code, firstLines(stderr, 3), exitOK)
		}
	})

	t.Run("listed in bench usage", func(t *testing.T) {
		code, stderr := runCmd(t, "bench", "-h")
		if code != exitOK || !strings.Contains(stderr, "failover") {
			t.Errorf("exit %d, stderr %q; want the failover verb listed", code, stderr)
		}
	})
}
