package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pcluster "github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/pglocal"
)

// TestAgentRefusesNameSharingASlot: an agent whose name maps to the
// replication slot of a member already in etcd exits 2, its last line
// naming the setting and the other member's key, and touches no data.
func TestAgentRefusesNameSharingASlot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	cli, err := etcd.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys, _ := pcluster.NewKeys("slots")
	rec, err := pcluster.MarshalMember(pcluster.Member{Name: "node-1", Role: pcluster.RolePrimary, Host: "127.0.0.1", Port: 5432})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, keys.Member("node-1"), string(rec)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "data")
	code, stderr := runCmd(t, "agent", "--name", "node_1", "--cluster", "slots", "--etcd", strings.Join(etcd.Endpoints(), ","),
		"--data-dir", dataDir, "--pg-port", itoa(int64(port)), "--superuser-password-file", pw, "--replication-password-file", pw)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	want := `pharos agent: name "node_1": its replication slot "node_1" is that of member "node-1" (` + keys.Member("node-1") + ")"
	if code != exitUsage || !strings.HasPrefix(last, want) {
		t.Errorf("exit %d, last line %q; want exit 2 and a line starting %q\n%s", code, last, want, stderr)
	}
	if _, err := os.Stat(dataDir); err == nil {
		t.Error("the refused agent created its data directory")
	}
}
