package haagent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// serverConf is what the files writeConf writes depend on besides the
// static configuration: all of it explicit, nothing set on postgres before.
type serverConf struct {
	// Standby: write standby.signal; Upstream is the member it follows
	// (nil: none).
	Standby  bool
	Upstream *cluster.Member
	// Dynamic are the cluster-wide parameters of the config key.
	Dynamic map[string]string
	// SyncNames is what synchronous_standby_names names (a primary's).
	SyncNames []string
}

// writeConf writes pharos.conf, pg_hba.conf and standby.signal (or removes
// it) for the next start.
func (p *postgres) writeConf(c serverConf) error {
	upstream := c.Upstream
	if !c.Standby {
		upstream = nil
	}
	in := confInputs{
		Listen: p.cfg.Listen, Port: p.cfg.Port, SocketDir: p.cfg.SocketDir, Name: p.cfg.Name,
		Dynamic: c.Dynamic, Local: p.cfg.Parameters, SyncNames: c.SyncNames,
	}
	if upstream != nil {
		in.Upstream, in.PrimaryConninfo = upstream.Name, p.primaryConninfo(*upstream)
		// Before the configuration that makes the walreceiver look
		// the password up for this upstream.
		if err := p.writePassfile(*upstream); err != nil {
			return fmt.Errorf("passfile: %w", err)
		}
	} else if err := p.removePassfile(); err != nil {
		return fmt.Errorf("passfile: %w", err)
	}
	text, ignored := renderConf(in)
	for _, ig := range ignored {
		if ig.protected {
			p.log.Warn("parameter ignored: the agent sets it", "parameter", ig.name)
		} else {
			p.log.Warn("parameter ignored", "err", ig.err)
		}
	}
	if err := p.writeOwned(confFile, text); err != nil {
		return err
	}
	if err := p.writeOwned("pg_hba.conf", p.hba()); err != nil {
		return err
	}
	if c.Standby {
		return p.writeOwned("standby.signal", "")
	}
	if err := os.Remove(p.path("standby.signal")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// quoteConfValue quotes a postgresql.conf value. Inside quotes the file's
// parser reads backslash escapes as C does (GUC_scanstr), so a backslash is
// doubled as well as a quote: unescaped, C:\x would lose its backslash
// and a value ending in one would swallow the closing quote (the server
// would not start).
func quoteConfValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(v) + "'"
}

// The password is passed through the environment of the walreceiver, not
// written here: primary_conninfo lands in a file the whole cluster copies.
// libpq reads it from a passfile the agent writes beside the data dir.
func (p *postgres) primaryConninfo(up cluster.Member) string {
	ci := fmt.Sprintf("host=%s port=%s user=%s application_name=%s passfile=%s connect_timeout=2",
		pgproc.QuoteConninfo(up.Host), pgproc.QuoteConninfo(strconv.Itoa(up.Port)), pgproc.QuoteConninfo(p.cfg.ReplicationUser), pgproc.QuoteConninfo(p.cfg.Name), pgproc.QuoteConninfo(p.passfile()))
	// A libpq that does not know the option refuses the whole string.
	if p.libpqRequireAuth() {
		ci += " require_auth=" + pgproc.QuoteConninfo(p.cfg.RequireAuth)
	}
	return ci
}

func (p *postgres) passfile() string {
	return filepath.Join(filepath.Dir(p.cfg.DataDir), ".pharos-pgpass")
}

func (p *postgres) hba() string {
	lines := p.cfg.HBA
	if len(lines) == 0 {
		lines = []string{
			"local all all scram-sha-256",
			"host replication " + p.cfg.ReplicationUser + " 127.0.0.0/8 scram-sha-256",
			"host all all 127.0.0.0/8 scram-sha-256",
		}
	}
	return "# written by the pharos agent\n" + strings.Join(lines, "\n") + "\n"
}

func (p *postgres) writeOwned(name, content string) error {
	return writeFileAtomic(p.path(name), []byte(content), p.cfg.Owner)
}

// formatSyncNames writes synchronous_standby_names: FIRST k (names),
// with application_name = member name.
func formatSyncNames(names []string) string {
	if len(names) == 0 {
		return ""
	}
	if len(names) == 1 && names[0] == "*" {
		return "FIRST 1 (*)"
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = `"` + n + `"`
	}
	return fmt.Sprintf("FIRST %d (%s)", len(names), strings.Join(quoted, ", "))
}

// parseSyncNames reads back what formatSyncNames wrote (and Patroni-like
// plain lists): the names, or ["*"].
func parseSyncNames(v string) []string {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil
	}
	if i, j := strings.IndexByte(v, '('), strings.LastIndexByte(v, ')'); i >= 0 && j > i {
		v = v[i+1 : j]
	}
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.Trim(strings.TrimSpace(f), `"`); f != "" {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}
