package localha

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// proxyStopTimeout bounds how long Proxy.Stop waits after SIGTERM.
const proxyStopTimeout = 10 * time.Second

// Proxy is a `pharos proxy` process, for the tests and chaos runs that
// reach a cluster through the proxy as users run it.
type Proxy struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
}

// StartProxy runs `binary proxy args...` with its output appended to
// logPath.
func StartProxy(binary, logPath string, args ...string) (*Proxy, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(binary, append([]string{"proxy"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start proxy: %w", err)
	}
	p := &Proxy{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Stop sends SIGTERM and waits for the proxy to drain and exit; a proxy
// still running proxyStopTimeout later is killed, and that is an error.
// Stopping a proxy that has exited returns nil.
func (p *Proxy) Stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(proxyStopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("proxy did not stop within %v of SIGTERM, killed", proxyStopTimeout)
	}
}
