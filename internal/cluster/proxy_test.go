package cluster

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func validProxy() Proxy {
	return Proxy{
		Name:      "px1:6432",
		Version:   "v0.9.0",
		Listeners: ProxyListeners{RW: "10.0.0.5:6432", RO: "10.0.0.5:6433", Metrics: "10.0.0.5:6434"},
		StartedAt: time.Date(2026, 12, 2, 18, 0, 0, 0, time.UTC),
		CancelID:  3,
	}
}

func TestProxyRecordRoundTrip(t *testing.T) {
	p := validProxy()
	p.DrainAck = 42
	b, err := MarshalProxy(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"name":"px1:6432","version":"v0.9.0","listeners":{"rw":"10.0.0.5:6432","ro":"10.0.0.5:6433","metrics":"10.0.0.5:6434"},` +
		`"started_at":"2026-12-02T18:00:00Z","cancel_id":3,"drain_ack":42}`
	if string(b) != want {
		t.Fatalf("encoded\n%s\nwant\n%s", b, want)
	}
	back, err := ParseProxy(b)
	if err != nil || back != p {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	// A newer proxy's extra field is ignored.
	if _, err := ParseProxy([]byte(strings.Replace(want, `"version"`, `"future":[1],"version"`, 1))); err != nil {
		t.Fatalf("unknown field refused: %v", err)
	}
}

func TestParseProxyRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Proxy)
		json string
		want string
	}{
		{name: "half written", json: `{"name":"px1","listeners":{"rw":"10.0.0.5:64`, want: "unexpected end"},
		{name: "not JSON", json: "garbage", want: "invalid character"},
		{name: "JSON null", json: "null", want: "name"},
		{name: "wrong type", json: `{"name":"px1","cancel_id":"3"}`, want: "cancel_id"},
		{name: "no name", edit: func(p *Proxy) { p.Name = "" }, want: "name"},
		{name: "name with slash", edit: func(p *Proxy) { p.Name = "a/b" }, want: "name"},
		{name: "cancel id too large", edit: func(p *Proxy) { p.CancelID = 512 }, want: "cancel_id"},
		{name: "negative drain ack", edit: func(p *Proxy) { p.DrainAck = -1 }, want: "drain_ack"},
		{name: "no client listener", edit: func(p *Proxy) { p.Listeners.RW, p.Listeners.RO = "", "" }, want: "neither rw nor ro"},
		{name: "listener without port", edit: func(p *Proxy) { p.Listeners.RW = "10.0.0.5" }, want: "listeners.rw"},
		{name: "listener port zero", edit: func(p *Proxy) { p.Listeners.RO = "10.0.0.5:0" }, want: "listeners.ro"},
		{name: "listener with keyword", edit: func(p *Proxy) { p.Listeners.RW = "a host=evil:5432" }, want: "listeners.rw"},
		{name: "v6 listener without brackets", edit: func(p *Proxy) { p.Listeners.RW = "::1:6432" }, want: "listeners.rw"},
		{name: "metrics listener bad", edit: func(p *Proxy) { p.Listeners.Metrics = ":x" }, want: "listeners.metrics"},
		{name: "version with escape", edit: func(p *Proxy) { p.Version = "v1\x1b[2J" }, want: "non-printable"},
		{name: "version too long", edit: func(p *Proxy) { p.Version = strings.Repeat("v", 65) }, want: "version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.json)
			if tc.edit != nil {
				p := validProxy()
				tc.edit(&p)
				if _, err := MarshalProxy(p); err == nil {
					t.Fatal("MarshalProxy accepted it")
				}
				data = mustJSON(t, p)
			}
			_, err := ParseProxy(data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseProxy(%s) = %v, want an error about %q", data, err, tc.want)
			}
		})
	}
}

func TestProxyListenerForms(t *testing.T) {
	for _, addr := range []string{"10.0.0.5:6432", "[::1]:6432", "[fe80::1%eth0]:6432", "px-1.example.com:6432"} {
		p := validProxy()
		p.Listeners.RW = addr
		if err := p.Validate(); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
}

func TestCancelAddr(t *testing.T) {
	if got := (ProxyListeners{RW: "a:1", RO: "b:2"}).CancelAddr(); got != "a:1" {
		t.Fatalf("%q, want rw", got)
	}
	if got := (ProxyListeners{RO: "b:2"}).CancelAddr(); got != "b:2" {
		t.Fatalf("%q, want ro when there is no rw", got)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
