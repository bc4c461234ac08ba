package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharos-ha/pharos/haagent"
	"github.com/pharos-ha/pharos/metrics"
)

// The docs a reader follows: the README, the task pages under docs/, the
// deployment guide and the agent's design note. Paths are relative to the
// repository root.
const repoRoot = "../.."

var docPatterns = []string{"README.md", "docs/*.md", "deploy/README.md", "haagent/design.md"}

// docFile is one Markdown file, read once.
type docFile struct {
	path  string // relative to repoRoot
	text  string
	prose string // the text without fenced code blocks
}

func loadDocs(t *testing.T) []docFile {
	t.Helper()
	var docs []docFile
	for _, pat := range docPatterns {
		paths, err := filepath.Glob(filepath.Join(repoRoot, pat))
		if err != nil || len(paths) == 0 {
			t.Fatalf("no doc matches %s (%v)", pat, err)
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(repoRoot, p)
			docs = append(docs, docFile{path: rel, text: string(b), prose: withoutFences(string(b))})
		}
	}
	return docs
}

// withoutFences blanks the lines of fenced code blocks (``` … ```), the
// fences included, keeping the line count.
func withoutFences(text string) string {
	lines := strings.Split(text, "\n")
	fenced := false
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			lines[i] = ""
			continue
		}
		if fenced {
			lines[i] = ""
		}
	}
	return strings.Join(lines, "\n")
}

var (
	headingRE  = regexp.MustCompile(`(?m)^#{1,6}[ \t]+(.+?)[ \t#]*$`)
	codeSpanRE = regexp.MustCompile("`[^`]*`")
	// [text](target): the text may span lines (Markdown wraps it).
	linkRE = regexp.MustCompile(`\]\(([^)\s]+)\)`)
)

// anchors returns the fragment ids GitHub gives the headings of a
// Markdown text: lower case, letters, digits, '_' and '-' kept, spaces
// become '-', anything else dropped; a repeated id gets -1, -2, ….
func anchors(prose string) map[string]bool {
	ids := map[string]bool{}
	seen := map[string]int{}
	for _, m := range headingRE.FindAllStringSubmatch(prose, -1) {
		var b strings.Builder
		for _, r := range strings.ToLower(strings.ReplaceAll(m[1], "`", "")) {
			switch {
			case unicode.IsLetter(r), unicode.IsDigit(r), r == '_', r == '-':
				b.WriteRune(r)
			case r == ' ':
				b.WriteByte('-')
			}
		}
		id := b.String()
		if n := seen[id]; n > 0 {
			seen[id] = n + 1
			id = fmt.Sprintf("%s-%d", id, n)
		} else {
			seen[id] = 1
		}
		ids[id] = true
	}
	return ids
}

// links returns the relative link targets of a doc's prose (code spans and
// fenced blocks are not Markdown links), with the line each starts on.
func links(d docFile) (targets []string, lines []int) {
	// Code spans may wrap too, so they are blanked paragraph by paragraph:
	// an unbalanced backtick cannot swallow the rest of the file.
	var out strings.Builder
	for i, para := range strings.Split(d.prose, "\n\n") {
		if i > 0 {
			out.WriteString("\n\n")
		}
		out.WriteString(codeSpanRE.ReplaceAllStringFunc(para, func(s string) string {
			return strings.Map(func(r rune) rune {
				if r == '\n' {
					return r
				}
				return ' '
			}, s)
		}))
	}
	prose := out.String()
	for _, m := range linkRE.FindAllStringSubmatchIndex(prose, -1) {
		target := prose[m[2]:m[3]]
		if regexp.MustCompile(`^[a-z][a-z0-9+.-]*:`).MatchString(target) {
			continue // https:, mailto:: not ours to check
		}
		targets = append(targets, target)
		lines = append(lines, 1+strings.Count(prose[:m[0]], "\n"))
	}
	return targets, lines
}

// TestDocLinks checks that every relative link in the docs names a file
// that exists and, when it has a #fragment into a Markdown file, a heading
// of that file: moving a section or renaming a page cannot leave a reader
// at a dead end.
func TestDocLinks(t *testing.T) {
	docs := loadDocs(t)
	ids := map[string]map[string]bool{}
	for _, d := range docs {
		ids[d.path] = anchors(d.prose)
	}
	checked := 0
	for _, d := range docs {
		targets, lines := links(d)
		for i, target := range targets {
			checked++
			where := fmt.Sprintf("%s:%d: link %q", d.path, lines[i], target)
			file, frag, _ := strings.Cut(target, "#")
			dest := d.path
			if file != "" {
				dest = filepath.Join(filepath.Dir(d.path), file)
				if _, err := os.Stat(filepath.Join(repoRoot, dest)); err != nil {
					t.Errorf("%s: no such file %s", where, dest)
					continue
				}
			}
			if frag == "" {
				continue
			}
			if !strings.HasSuffix(dest, ".md") {
				t.Errorf("%s: a fragment into a file that is not Markdown", where)
				continue
			}
			known, ok := ids[dest]
			if !ok {
				b, err := os.ReadFile(filepath.Join(repoRoot, dest))
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				known = anchors(withoutFences(string(b)))
				ids[dest] = known
			}
			if !known[frag] {
				t.Errorf("%s: %s has no heading #%s", where, dest, frag)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d relative links found in the docs: the link parser is broken", checked)
	}
}

// descNames is a Registerer that only records the names of what is
// registered on it.
type descNames map[string]bool

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

func (n descNames) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqNameRE.FindStringSubmatch(d.String()); m != nil {
			n[m[1]] = true
		}
	}
	return nil
}

func (n descNames) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = n.Register(c)
	}
}

func (n descNames) Unregister(prometheus.Collector) bool { return false }

// TestDocMetricNames checks that every pharos metric the docs name is one
// the metrics package defines (proxy, etcd source, agent, build info).
func TestDocMetricNames(t *testing.T) {
	defined := descNames{}
	pm := metrics.NewProxy(defined)
	pm.RegisterEtcd(defined)
	pm.RegisterRegistry(defined)
	metrics.NewAgent(defined)
	metrics.RegisterBuildInfo(defined, "test", "test")
	if len(defined) < 30 {
		t.Fatalf("only %d metrics defined: the name recorder is broken", len(defined))
	}
	nameRE := regexp.MustCompile(`\bpharos_(?:proxy|router|agent|backend|build)_[a-z0-9_]*[a-z0-9]`)
	named := 0
	for _, d := range loadDocs(t) {
		for _, name := range nameRE.FindAllString(d.text, -1) {
			named++
			base := name
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if s, ok := strings.CutSuffix(name, suf); ok && defined[s] {
					base = s
				}
			}
			if !defined[base] {
				t.Errorf("%s names metric %s, which the metrics package does not define", d.path, name)
			}
		}
	}
	if named == 0 {
		t.Fatal("no metric names found in the docs")
	}
}

// Flags of other programs the docs show (etcd, etcdctl, pg_basebackup,
// useradd, systemctl, udevadm): not pharos's to check.
var otherToolsFlags = []string{
	"cacert", "cert", "key", "endpoints", "prefix", // etcdctl
	"config-file", "election-timeout", // etcd
	"max-rate", "progress", // pg_basebackup
	"no-create-home", "shell", "system", "user-group", // useradd
	"now",                       // systemctl enable/disable
	"reload", "subsystem-match", // udevadm
}

// TestDocFlags checks that every --flag the docs name is a flag of some
// pharos command (as its --help lists it) or of another program they run.
func TestDocFlags(t *testing.T) {
	var calls [][]string
	for _, c := range []string{"agent", "proxy", "watchdog", "demo"} {
		calls = append(calls, []string{c, "--help"})
	}
	for _, v := range []string{"list", "history", "switchover", "failover", "pause", "resume", "show-config", "edit-config"} {
		calls = append(calls, []string{"ctl", "--etcd", "127.0.0.1:1", "--cluster", "docs", v, "--help"})
	}
	for _, v := range []string{"throughput", "switch", "failover", "report"} {
		calls = append(calls, []string{"bench", v, "-h"})
	}
	cmds := map[string]subcommand{}
	for _, c := range subcommands() {
		cmds[c.name] = c
	}
	known := map[string]bool{}
	flagRE := regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`)
	for _, args := range calls {
		var out, errOut bytes.Buffer
		cmds[args[0]].run(context.Background(), args[1:], &out, &errOut)
		for _, m := range flagRE.FindAllStringSubmatch(out.String()+errOut.String(), -1) {
			known[m[1]] = true
		}
	}
	if !known["ttl"] || !known["rw-listen"] || !known["max-lag"] {
		t.Fatalf("the --help outputs did not list the expected flags: %v", known)
	}
	useRE := regexp.MustCompile("(?:^|[\\s(\\[`'\"|])--([a-z][a-z0-9-]*)")
	for _, d := range loadDocs(t) {
		for _, m := range useRE.FindAllStringSubmatch(d.text, -1) {
			if !known[m[1]] && !slices.Contains(otherToolsFlags, m[1]) {
				t.Errorf("%s names --%s, which no pharos command has", d.path, m[1])
			}
		}
	}
}

// TestDocAuthFunctionSQL: the SQL docs/proxy.md gives to create the
// auth_query function by hand is the one the agent runs at bootstrap.
func TestDocAuthFunctionSQL(t *testing.T) {
	doc, err := os.ReadFile("../../docs/proxy.md")
	if err != nil {
		t.Fatal(err)
	}
	if want := haagent.AuthFunctionSQL("pharos_auth"); !strings.Contains(string(doc), "\n"+want+"\n```") {
		t.Errorf("docs/proxy.md does not give the agent's function SQL verbatim:\n%s", want)
	}
}
