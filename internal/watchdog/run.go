package watchdog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pharos-ha/pharos/internal/pgproc"
)

// The software watchdog's commands (see the package doc).
const (
	cmdFeed       = '.'
	cmdTimeout    = 'T'
	cmdMagicClose = 'V'
	maxLine       = 64 // a "T <duration>" line longer than this is ignored
)

// RunSoftware is the body of `pharos watchdog`: it counts from now with
// timeout, reads the agent's commands from in, and on a missed deadline
// kills the PostgreSQL server of dataDir and returns an error saying so.
// It returns nil after a magic close ('V' then EOF), and ctx's cause when
// ctx ends first (without firing: the command never cancels ctx, so only
// in-process callers such as tests can stop it this way). EOF without 'V'
// does not stop the countdown.
//
// A goroutine reads in; it ends when a read returns (EOF or error), which
// may be after RunSoftware has returned if in stays open.
func RunSoftware(ctx context.Context, in io.Reader, dataDir string, timeout time.Duration, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if timeout <= 0 {
		return fmt.Errorf("watchdog: timeout %s must be positive", timeout)
	}
	dir, err := resolveDataDir(dataDir)
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	stop := make(chan struct{})
	defer close(stop)
	chunks := make(chan []byte)
	readErr := make(chan error, 1)
	go readCommands(in, chunks, readErr, stop)

	var dec decoder
	lastFeed := time.Now()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	log.Info("watchdog armed", "data_dir", dir, "timeout", timeout, "pid", os.Getpid())
	for {
		select {
		case p := <-chunks:
			r := dec.decode(p)
			for _, b := range r.invalid {
				log.Warn("watchdog: ignoring an unknown command", "command", b)
			}
			if r.timeout > 0 && r.timeout != timeout {
				log.Info("watchdog timeout changed", "from", timeout, "to", r.timeout)
				timeout = r.timeout
			}
			if r.fed {
				lastFeed = time.Now()
				timer.Reset(timeout)
			}
		case err := <-readErr:
			chunks, readErr = nil, nil // nothing more will come
			if dec.magic && errors.Is(err, io.EOF) {
				log.Info("watchdog disarmed (magic close)", "data_dir", dir)
				return nil
			}
			log.Warn("watchdog input closed without magic close: still armed, firing at the deadline unless fed",
				"data_dir", dir, "deadline_in", time.Until(lastFeed.Add(timeout)).Round(time.Millisecond), "err", err)
		case <-timer.C:
			return fire(dir, lastFeed, timeout, log)
		case <-ctx.Done():
			log.Warn("watchdog stopped without magic close: no longer armed", "data_dir", dir, "cause", context.Cause(ctx))
			return fmt.Errorf("watchdog stopped: %w", context.Cause(ctx))
		}
	}
}

// readCommands sends what it reads from in on chunks until a read fails,
// then sends that error (io.EOF at the end) on errc; stop abandons it.
func readCommands(in io.Reader, chunks chan<- []byte, errc chan<- error, stop <-chan struct{}) {
	for {
		buf := make([]byte, 512)
		n, err := in.Read(buf)
		if n > 0 {
			select {
			case chunks <- buf[:n]:
			case <-stop:
				return
			}
		}
		if err != nil {
			errc <- err // buffered: never blocks
			return
		}
	}
}

// resolveDataDir returns dataDir as /proc shows a working directory:
// absolute, symbolic links resolved. It must be a directory.
func resolveDataDir(dataDir string) (string, error) {
	if dataDir == "" {
		return "", errors.New("data directory: required")
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", fmt.Errorf("data directory: %w", err)
	}
	dir, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("data directory: %w", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("data directory: %w", err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("data directory %s: not a directory", dir)
	}
	return dir, nil
}

// decoder parses the agent's byte stream; it keeps state across chunks.
type decoder struct {
	magic  bool   // the last command was 'V'
	inLine bool   // inside a "T <duration>" line
	line   []byte // its text so far
	long   bool   // the line exceeded maxLine
}

// decoded is what one chunk said.
type decoded struct {
	fed     bool          // the deadline restarts (a feed or a new timeout)
	timeout time.Duration // the last valid new timeout, 0 if none
	invalid []string      // unknown bytes and bad "T" lines, for the log
}

func (d *decoder) decode(p []byte) decoded {
	var r decoded
	for _, b := range p {
		if d.inLine {
			if b != '\n' {
				if len(d.line) < maxLine {
					d.line = append(d.line, b)
				} else {
					d.long = true
				}
				continue
			}
			text := strings.TrimSpace(string(d.line))
			v, err := time.ParseDuration(text)
			switch {
			case d.long:
				r.invalid = append(r.invalid, "T line too long")
			case err != nil || v <= 0:
				r.invalid = append(r.invalid, fmt.Sprintf("T %q: not a positive duration", text))
			default:
				r.timeout, r.fed = v, true
			}
			d.inLine, d.line, d.long = false, d.line[:0], false
			continue
		}
		switch b {
		case cmdFeed:
			r.fed, d.magic = true, false
		case cmdMagicClose:
			d.magic = true
		case cmdTimeout:
			d.inLine, d.magic = true, false
		case '\n', '\r', ' ', '\t':
		default:
			d.magic = false
			r.invalid = append(r.invalid, strconv.QuoteRune(rune(b)))
		}
	}
	return r
}

// fire kills the server of dataDir: the postmaster of postmaster.pid first,
// then every postgres process running in dataDir. It returns the error
// RunSoftware ends with.
func fire(dataDir string, lastFeed time.Time, timeout time.Duration, log *slog.Logger) error {
	firedAt := time.Now()
	postmaster, why := postmasterPid(dataDir)
	if postmaster != 0 {
		if err := syscall.Kill(postmaster, syscall.SIGKILL); err != nil {
			why = fmt.Sprintf("kill postmaster %d: %v", postmaster, err)
			postmaster = 0
		}
	}
	var others []int
	for _, pid := range pgproc.ServerProcesses(dataDir) {
		if pid == postmaster {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			others = append(others, pid)
		}
	}
	attrs := []any{
		"fired_at", firedAt.UTC().Format(time.RFC3339Nano),
		"data_dir", dataDir, "timeout", timeout,
		"since_last_feed", firedAt.Sub(lastFeed).Round(time.Millisecond),
		"other_processes_killed", others,
	}
	if postmaster != 0 {
		log.Error(fmt.Sprintf("watchdog fired: postmaster %d killed", postmaster), attrs...)
	} else {
		log.Error("watchdog fired: no postmaster killed", append(attrs, "reason", why)...)
	}
	return fmt.Errorf("watchdog fired: no feed for %s (timeout %s); postmaster %d, %d other server processes killed",
		firedAt.Sub(lastFeed).Round(time.Millisecond), timeout, postmaster, len(others))
}

// postmasterPid reads the first line of dataDir/postmaster.pid and returns
// that pid if the process runs in dataDir (a postmaster's working directory
// is its data directory); otherwise 0 and why.
func postmasterPid(dataDir string) (int, string) {
	pid, err := pgproc.PidFile(dataDir)
	if err != nil {
		return 0, err.Error()
	}
	cwd, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "cwd"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, fmt.Sprintf("postmaster %d is not running", pid)
	case err != nil:
		// Cannot check (permissions): fencing matters more than a
		// stale pid file.
		return pid, ""
	case cwd != dataDir:
		return 0, fmt.Sprintf("stale postmaster.pid: process %d runs in %s", pid, cwd)
	}
	return pid, ""
}
