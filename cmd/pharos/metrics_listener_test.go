package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// TestMetricsListenerClosesSlowAndIdleClients: a client of the metrics
// listener that trickles its request, never sends the body it announced, or
// keeps a connection idle after a response is closed by the server. The
// production timeouts are all set; the behaviour is shown with short ones
// so the test is quick.
func TestMetricsListenerClosesSlowAndIdleClients(t *testing.T) {
	if metricsTimeouts.readHeader <= 0 || metricsTimeouts.read <= 0 || metricsTimeouts.idle <= 0 {
		t.Fatalf("metrics listener timeouts %+v: every one must be set", metricsTimeouts)
	}
	// hang bounds every wait: it only says "was not held open forever".
	const hang = 5 * time.Second
	short := httpTimeouts{readHeader: 300 * time.Millisecond, read: 500 * time.Millisecond, idle: 300 * time.Millisecond}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.NewRegistry(), promhttp.HandlerOpts{}))
	hs := newMetricsServer(mux, short)
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hang)
		defer cancel()
		_ = hs.Shutdown(ctx)
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})

	dial := func(t *testing.T) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", ln.Addr().String(), hang)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	// closedByServer reads (discarding any response) until the server
	// closes the connection.
	closedByServer := func(t *testing.T, c net.Conn) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(hang))
		_, err := io.Copy(io.Discard, c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the server kept the connection open for %v", hang)
		}
	}

	t.Run("headers trickled one line at a time", func(t *testing.T) {
		c := dial(t)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			_, _ = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n")
			for range 100 { // bounded: 10 s at most
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				if _, err := io.WriteString(c, "X-Slow: y\r\n"); err != nil {
					return
				}
			}
		}()
		closedByServer(t, c)
	})
	t.Run("announced body never sent", func(t *testing.T) {
		c := dial(t)
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		closedByServer(t, c)
	})
	t.Run("idle after a response", func(t *testing.T) {
		c := dial(t)
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(hang))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("status %d, close %v: want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
		}
		_, err = io.Copy(io.Discard, br)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the server kept the idle connection open for %v", hang)
		}
	})
}
