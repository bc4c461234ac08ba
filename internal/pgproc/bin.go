package pgproc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DefaultBinDir is where Debian's postgresql-15 package puts the server.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// BinDirEnv overrides DefaultBinDir.
const BinDirEnv = "PHAROS_PG_BINDIR"

// FindBinDir returns the directory holding the PostgreSQL server programs:
// explicit when not empty, else $PHAROS_PG_BINDIR, else DefaultBinDir, else
// `pg_config --bindir`. The directory must contain postgres, initdb and
// pg_basebackup; the other programs of a server installation come with
// them.
func FindBinDir(ctx context.Context, explicit string) (string, error) {
	var candidates []string
	switch {
	case explicit != "":
		candidates = []string{explicit}
	case os.Getenv(BinDirEnv) != "":
		candidates = []string{os.Getenv(BinDirEnv)}
	default:
		candidates = []string{DefaultBinDir}
		if dir := pgConfigBinDir(ctx); dir != "" && dir != DefaultBinDir {
			candidates = append(candidates, dir)
		}
	}
	var firstErr error
	for _, dir := range candidates {
		missing := missingBins(dir)
		if len(missing) == 0 {
			return dir, nil
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("PostgreSQL binaries not found: %s lacks %s (set %s, or run scripts/ensure-deps.sh)",
				dir, strings.Join(missing, ", "), BinDirEnv)
		}
	}
	return "", firstErr
}

func missingBins(dir string) []string {
	var missing []string
	for _, b := range []string{"postgres", "initdb", "pg_basebackup"} {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	return missing
}

func pgConfigBinDir(ctx context.Context) string {
	path, err := exec.LookPath("pg_config")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--bindir").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
