package etcdclient_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/etcdclient"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestNewRefusesPlainHTTPWithSecrets: the etcd client would drop the TLS
// configuration for an http:// endpoint and send a password in clear; New
// refuses instead.
func TestNewRefusesPlainHTTPWithSecrets(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  etcdclient.Config
	}{
		{"TLS", etcdclient.Config{Endpoints: []string{"http://127.0.0.1:1"}, TLS: &tls.Config{MinVersion: tls.VersionTLS12}}},
		{"a password", etcdclient.Config{Endpoints: []string{"http://127.0.0.1:1"}, Username: "u", Password: "p"}},
		{"one of several, in capitals", etcdclient.Config{Endpoints: []string{"https://127.0.0.1:1", "HTTP://127.0.0.2:1"}, Username: "u", Password: "p"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, err := etcdclient.New(tc.cfg)
			if err == nil {
				cli.Close()
				t.Fatal("New accepted a plain http:// endpoint")
			}
			if !strings.Contains(err.Error(), "plain http://") {
				t.Errorf("err = %v", err)
			}
		})
	}
	if got := etcdclient.PlainEndpoint([]string{"127.0.0.1:2379", "https://a:1", "unix:///run/etcd.sock"}); got != "" {
		t.Errorf("PlainEndpoint found %q among endpoints without http://", got)
	}
	if _, err := etcdclient.New(etcdclient.Config{}); err == nil {
		t.Error("New accepted no endpoint")
	}
}

// TestNewWithAuthentication: with etcd's authentication on (over TLS: a
// password is refused on http:// endpoints), the right user and password
// read, and a wrong password is refused when the client is made, with
// etcd's reason.
func TestNewWithAuthentication(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	files, tc, err := etcdlocal.SelfSignedTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{ClientTLS: files})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	admin, err := etcd.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserAdd(ctx, "root", "root-secret"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	// The first connection includes a TLS handshake and etcd's bcrypt
	// check of the password: the default 2 s ran out on two loaded cores
	// under -race.
	authed := etcdclient.Config{Endpoints: etcd.Endpoints(), Username: "root", Password: "root-secret", TLS: tc, DialTimeout: 15 * time.Second}
	// Leave etcd without authentication for Close.
	defer func() {
		if cli, err := etcdclient.New(authed); err == nil {
			_, _ = cli.AuthDisable(ctx)
			cli.Close()
		}
	}()

	t.Run("wrong password is refused with etcd's reason", func(t *testing.T) {
		wrong := authed
		wrong.Password = "wrong"
		cli, err := etcdclient.New(wrong)
		if err == nil {
			cli.Close()
			t.Fatal("New with a wrong password succeeded")
		}
		if !strings.Contains(err.Error(), "authentication failed") {
			t.Errorf("error %q does not say authentication failed", err)
		}
	})
	t.Run("right password reads", func(t *testing.T) {
		cli, err := etcdclient.New(authed)
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		resp, err := cli.Get(ctx, "/k")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
			t.Fatalf("read %v, want /k = v", resp.Kvs)
		}
	})
}
