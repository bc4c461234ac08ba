package haagent

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

func testPostgres(t *testing.T) *postgres {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(filepath.Join(data, "pg_wal"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The files stay the caller's: no server reads them here.
	self := pgproc.Owner{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	return newPostgres(PostgresConfig{Name: "node-A.1", DataDir: data, Port: 5433, SuperUser: "postgres", ReplicationUser: "repl",
		ReplicationPassword: "p:w\\d", Owner: self},
		slog.New(slog.DiscardHandler))
}

func TestSlotName(t *testing.T) {
	for in, want := range map[string]string{"n1": "n1", "Node-A.1": "node_a_1", "db_2": "db_2"} {
		if got := core.SlotName(in); got != want {
			t.Errorf("SlotName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSwitchPoint(t *testing.T) {
	p := testPostgres(t)
	history := "1\t0/3000148\tno recovery target specified\n\n2\t0/5000A28\tno recovery target specified\n"
	if err := os.WriteFile(p.path("pg_wal/00000003.history"), []byte(history), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := p.switchPoint(3)
	if err != nil || got.String() != "0/5000A28" {
		t.Fatalf("switchPoint(3) = %v, %v; want 0/5000A28", got, err)
	}
	if _, err := p.switchPoint(4); err == nil {
		t.Error("switchPoint of a missing history file did not fail")
	}
	if err := os.WriteFile(p.path("pg_wal/00000005.history"), []byte("1\t0/1\tx\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := p.switchPoint(5); err == nil || !strings.Contains(err.Error(), "no line for timeline 4") {
		t.Errorf("history without the previous timeline: %v", err)
	}
}

// TestWriteConf: the standby configuration names its upstream (which the
// agent reads back to know whom it follows), the primary's does not, and
// standby.signal follows the role.
func TestWriteConf(t *testing.T) {
	p := testPostgres(t)
	up := cluster.Member{Name: "n2", Host: "127.0.0.2", Port: 6000}
	if err := p.writeConf(serverConf{Standby: true, Upstream: &up}); err != nil {
		t.Fatal(err)
	}
	conf, _ := os.ReadFile(p.path(confFile))
	for _, want := range []string{"port = '5433'", "cluster_name = 'node-A.1'", "primary_slot_name = 'node_a_1'",
		"host=''127.0.0.2'' port=''6000'' user=''repl''", "recovery_target_timeline = 'latest'"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("pharos.conf lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(string(conf), "p:w") {
		t.Error("the replication password is in pharos.conf")
	}
	if got := p.configuredUpstream(); got != "n2" {
		t.Errorf("upstream read back %q, want n2", got)
	}
	if _, err := os.Stat(p.path("standby.signal")); err != nil {
		t.Errorf("standby.signal: %v", err)
	}
	if err := p.writeConf(serverConf{}); err != nil {
		t.Fatal(err)
	}
	if got := p.configuredUpstream(); got != "" {
		t.Errorf("a primary follows %q", got)
	}
	if _, err := os.Stat(p.path("standby.signal")); err == nil {
		t.Error("standby.signal left on a primary")
	}
	hba, _ := os.ReadFile(p.path("pg_hba.conf"))
	if !strings.Contains(string(hba), "host replication repl 127.0.0.0/8 scram-sha-256") || strings.Contains(string(hba), "trust") {
		t.Errorf("pg_hba.conf:\n%s", hba)
	}
}

// TestRunLinesStall shows a copy that goes quiet is killed after the
// stall bound, not after its (long) total bound, and that one that keeps
// talking is not.
func TestRunLinesStall(t *testing.T) {
	p := testPostgres(t)
	p.cfg.BinDir = t.TempDir()
	script := filepath.Join(p.cfg.BinDir, "copier")
	// Prints "progress" every 50 ms for 0.5 s, then goes quiet for 30 s;
	// told to keep talking, it prints for 3 s (three stall bounds, each
	// gap far shorter than one even on a loaded machine) and exits.
	body := "#!/bin/sh\nn=10\n[ \"$1\" = talk ] && n=60\ni=0\nwhile [ $i -lt $n ]; do echo progress; sleep 0.05; i=$((i+1)); done\n[ \"$1\" = talk ] && exit 0\necho 'last words'\nexec sleep 30\n"
	const stall = time.Second
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	progress := func(l string) bool { return l == "progress" }

	began := time.Now()
	_, err := p.runLines(t.Context(), time.Hour, stall, nil, progress, "copier", "quiet")
	if err == nil || !errors.Is(err, errStalled) || !strings.Contains(err.Error(), "last words") {
		t.Fatalf("err = %v, want a kill for no output naming the last line", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("took %v: the stall bound did not stop it", took)
	}

	if _, err := p.runLines(t.Context(), time.Hour, stall, nil, progress, "copier", "talk"); err != nil {
		t.Errorf("a copy printing every 50 ms for longer than the stall bound failed: %v", err)
	}
}
