package watchdog

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Bounds of the agent's side of the software watchdog.
const (
	readyTimeout  = 5 * time.Second        // the child reports "armed"
	writeTimeout  = 100 * time.Millisecond // one command; a hung child must not hang the agent
	disarmTimeout = 2 * time.Second        // the child exits after the magic close
	killTimeout   = 2 * time.Second        // the child exits after SIGKILL
)

// LogFileName is the software watchdog's log, in the data directory's
// parent.
const LogFileName = "watchdog.log"

// Software implements Watchdog with a separate `pharos watchdog` process
// that the agent feeds through a pipe on its stdin. The process runs in its
// own session, so it survives the agent: if the agent dies or hangs, the
// process fires at the deadline and kills the local PostgreSQL.
type Software struct {
	// Static after construction.
	binary  string
	dataDir string
	log     *slog.Logger

	// Owned by the caller (not safe for concurrent use).
	c       *child        // nil when not armed
	timeout time.Duration // of c
}

// child is one `pharos watchdog` process.
type child struct {
	cmd   *exec.Cmd
	stdin *os.File      // the agent's end of the command pipe
	done  chan struct{} // closed by reap once the process has exited
	err   error         // Wait's result; read after done
}

// reap waits for the process so that it never lingers as a zombie.
func (c *child) reap() {
	c.err = c.cmd.Wait()
	close(c.done)
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// send writes one command, bounded by writeTimeout.
func (c *child) send(cmd string) error {
	if err := c.stdin.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return err
	}
	_, err := c.stdin.WriteString(cmd)
	return err
}

// kill SIGKILLs the process and waits for it to be reaped.
func (c *child) kill() error {
	_ = c.cmd.Process.Kill()
	select {
	case <-c.done:
		return nil
	case <-time.After(killTimeout):
		return fmt.Errorf("pid %d did not exit within %s of SIGKILL", c.cmd.Process.Pid, killTimeout)
	}
}

// NewSoftware returns a software watchdog that runs `binary watchdog` for
// dataDir; nothing is started until Arm.
func NewSoftware(binary, dataDir string, log *slog.Logger) *Software {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Software{binary: binary, dataDir: dataDir, log: log}
}

// LogPath is where the watchdog process's output goes:
// <dataDir>/../watchdog.log.
func (s *Software) LogPath() string {
	return filepath.Join(filepath.Dir(filepath.Clean(s.dataDir)), LogFileName)
}

// Arm starts the watchdog process and waits (up to 5 s) until it reports
// that it counts; when armed, it sends the new timeout instead. After an
// error no process is left running and Armed is false.
func (s *Software) Arm(timeout time.Duration) error {
	if timeout <= 0 {
		return fmt.Errorf("software watchdog: timeout %s must be positive", timeout)
	}
	if s.c != nil && !s.c.exited() {
		if err := s.c.send(fmt.Sprintf("%c %s\n", cmdTimeout, timeout)); err != nil {
			err = fmt.Errorf("software watchdog pid %d: set timeout %s: %w", s.c.cmd.Process.Pid, timeout, err)
			s.stop()
			return err
		}
		s.log.Info("software watchdog re-armed", "pid", s.c.cmd.Process.Pid, "timeout", timeout, "was", s.timeout)
		s.timeout = timeout
		return nil
	}
	s.forget()
	c, err := s.start(timeout)
	if err != nil {
		return fmt.Errorf("software watchdog: %w", err)
	}
	s.c, s.timeout = c, timeout
	s.log.Info("software watchdog armed", "pid", c.cmd.Process.Pid, "timeout", timeout, "log", s.LogPath())
	return nil
}

// start runs the process and waits for its readiness line.
func (s *Software) start(timeout time.Duration) (*child, error) {
	logPath := s.LogPath()
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log: %w", err)
	}
	defer logFile.Close()
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("command pipe: %w", err)
	}
	defer stdinR.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		stdinW.Close()
		return nil, fmt.Errorf("ready pipe: %w", err)
	}
	defer readyR.Close()

	dataDir, err := filepath.Abs(s.dataDir)
	if err != nil {
		stdinW.Close()
		return nil, fmt.Errorf("data directory: %w", err)
	}
	cmd := exec.Command(s.binary, "watchdog", "--data-dir", dataDir, "--timeout", timeout.String(), "--ready-fd", "3")
	cmd.Dir = "/" // pin no directory
	cmd.Stdin = stdinR
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.ExtraFiles = []*os.File{readyW} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close() // the child holds it now: EOF once the child closes it or exits
	if err != nil {
		stdinW.Close()
		return nil, fmt.Errorf("start %s: %w", s.binary, err)
	}
	c := &child{cmd: cmd, stdin: stdinW, done: make(chan struct{})}
	go c.reap()

	line, err := readLine(readyR, readyTimeout)
	if line == "armed" {
		return c, nil
	}
	stdinW.Close()
	var why string
	switch {
	case strings.HasPrefix(line, "error: "):
		why = strings.TrimPrefix(line, "error: ")
	case err != nil:
		why = fmt.Sprintf("no readiness within %s: %v", readyTimeout, err)
	default:
		why = fmt.Sprintf("unexpected readiness line %q", line)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) { // it said why, or closed the pipe: let it exit
		select {
		case <-c.done:
			if line == "" {
				why = exitStatus(c.err) + " before arming"
			}
		case <-time.After(disarmTimeout):
		}
	}
	if kerr := c.kill(); kerr != nil {
		s.log.Error("software watchdog: kill after a failed start", "err", kerr)
	}
	return nil, fmt.Errorf("pid %d did not arm: %s; see %s", cmd.Process.Pid, why, logPath)
}

// readLine reads one line from r within d.
func readLine(r *os.File, d time.Duration) (string, error) {
	if err := r.SetReadDeadline(time.Now().Add(d)); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(r).ReadString('\n')
	if err == nil {
		line = strings.TrimSuffix(line, "\n")
	}
	return line, err
}

// Feed sends one feed; it fails (in at most 100 ms) when the process is
// gone or does not read its input.
func (s *Software) Feed() error {
	if s.c == nil {
		return fmt.Errorf("software watchdog: feed: %w", ErrNotArmed)
	}
	if s.c.exited() {
		return fmt.Errorf("software watchdog pid %d: feed: process exited (%v)", s.c.cmd.Process.Pid, exitStatus(s.c.err))
	}
	if err := s.c.send(string(cmdFeed)); err != nil {
		return fmt.Errorf("software watchdog pid %d: feed: %w", s.c.cmd.Process.Pid, err)
	}
	return nil
}

// Disarm sends the magic close and waits (up to 2 s) for the process to
// exit; a process that does not is killed, and Disarm reports it. A no-op
// when not armed. Armed is false afterwards either way.
func (s *Software) Disarm() error {
	c := s.c
	if c == nil {
		return nil
	}
	s.c, s.timeout = nil, 0
	pid := c.cmd.Process.Pid
	if c.exited() {
		c.stdin.Close()
		s.log.Warn("software watchdog had already exited", "pid", pid, "status", exitStatus(c.err))
		return nil
	}
	werr := c.send(string(cmdMagicClose))
	c.stdin.Close()
	if werr == nil {
		select {
		case <-c.done:
			if c.err != nil {
				return fmt.Errorf("software watchdog pid %d: disarm: %v", pid, exitStatus(c.err))
			}
			s.log.Info("software watchdog disarmed", "pid", pid)
			return nil
		case <-time.After(disarmTimeout):
			werr = fmt.Errorf("no exit within %s of the magic close", disarmTimeout)
		}
	}
	if kerr := c.kill(); kerr != nil {
		return fmt.Errorf("software watchdog pid %d: disarm: %v; %w", pid, werr, kerr)
	}
	return fmt.Errorf("software watchdog pid %d: disarm: %v; killed it", pid, werr)
}

// Armed reports whether the watchdog process runs.
func (s *Software) Armed() bool { return s.c != nil && !s.c.exited() }

// Timeout is the timeout last sent to the process; 0 when not armed.
func (s *Software) Timeout() time.Duration {
	if !s.Armed() {
		return 0
	}
	return s.timeout
}

// stop kills the process after a failed re-arm, so Armed is false.
func (s *Software) stop() {
	c := s.c
	s.c, s.timeout = nil, 0
	c.stdin.Close()
	if err := c.kill(); err != nil {
		s.log.Error("software watchdog: kill after a failed re-arm", "err", err)
	}
}

// forget drops a process that has exited on its own (it fired).
func (s *Software) forget() {
	if s.c != nil {
		s.c.stdin.Close()
		s.c, s.timeout = nil, 0
	}
}

func exitStatus(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
