package pgauth

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// RFC 7677 section 3: user "user", password "pencil".
const (
	rfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
	rfcClientNonce = "rOprNGfwEbeRWgbNEkqO"
	rfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	rfcServerFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfcClientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
)

func rfcVerifier(t *testing.T) Verifier {
	t.Helper()
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	v, err := NewSCRAMVerifier("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestServerExchangeRFC7677(t *testing.T) {
	v := rfcVerifier(t)
	e := NewServerExchange(v, false, rfcServerNonce)
	sf, err := e.ClientFirst([]byte(rfcClientFirst))
	if err != nil || string(sf) != rfcServerFirst {
		t.Fatalf("server-first = %q, %v; want %q", sf, err, rfcServerFirst)
	}
	fin, keys, err := e.ClientFinal([]byte(rfcClientFinal))
	if err != nil || string(fin) != rfcServerFinal {
		t.Fatalf("server-final = %q, %v; want %q", fin, err, rfcServerFinal)
	}
	if keys.ServerKey != v.ServerKey || keys.Iterations != 4096 {
		t.Errorf("keys carry the wrong ServerKey or iterations")
	}
	// The recovered ClientKey is the one derived from the password.
	salted := mustSalted(t, "pencil", v.Salt, 4096)
	if want := hmacSum(salted, "Client Key"); keys.ClientKey != want {
		t.Errorf("recovered ClientKey %x, want %x", keys.ClientKey, want)
	}
}

func TestClientExchangeRFC7677(t *testing.T) {
	v := rfcVerifier(t)
	salted := mustSalted(t, "pencil", v.Salt, 4096)
	keys := Keys{ClientKey: hmacSum(salted, "Client Key"), ServerKey: v.ServerKey, Salt: v.Salt, Iterations: 4096}
	c := NewClientExchange(keys, rfcClientNonce)
	if got := string(c.First()); got != "n,,n=,r="+rfcClientNonce {
		t.Fatalf("client-first = %q", got)
	}
	// The RFC's AuthMessage has n=user; ours has n= (the server ignores
	// it), so the proof differs from the RFC's but must verify against the
	// server side, which hashes the same bare message.
	fin, err := c.ServerFirst([]byte(rfcServerFirst))
	if err != nil {
		t.Fatal(err)
	}
	s := NewServerExchange(v, false, rfcServerNonce)
	if _, err := s.ClientFirst([]byte("n,,n=,r=" + rfcClientNonce)); err != nil {
		t.Fatal(err)
	}
	sfin, got, err := s.ClientFinal(fin)
	if err != nil {
		t.Fatalf("server refused the ClientKey's proof: %v", err)
	}
	if got.ClientKey != keys.ClientKey {
		t.Errorf("server recovered another ClientKey")
	}
	if err := c.ServerFinal(sfin); err != nil {
		t.Errorf("client refused the server's signature: %v", err)
	}
	if err := c.ServerFinal([]byte(rfcServerFinal)); err == nil {
		t.Errorf("client accepted a signature over another AuthMessage")
	}
}

// TestClientExchangeReplaysRFCProof: with the RFC's own user name in the
// bare message the client's proof is the RFC's byte for byte.
func TestClientExchangeReplaysRFCProof(t *testing.T) {
	v := rfcVerifier(t)
	salted := mustSalted(t, "pencil", v.Salt, 4096)
	keys := Keys{ClientKey: hmacSum(salted, "Client Key"), ServerKey: v.ServerKey, Salt: v.Salt, Iterations: 4096}
	c := NewClientExchange(keys, rfcClientNonce)
	c.First()
	c.clientFirstBare = "n=user,r=" + rfcClientNonce
	fin, err := c.ServerFirst([]byte(rfcServerFirst))
	if err != nil || string(fin) != rfcClientFinal {
		t.Fatalf("client-final = %q, %v; want %q", fin, err, rfcClientFinal)
	}
	if err := c.ServerFinal([]byte(rfcServerFinal)); err != nil {
		t.Errorf("RFC server signature refused: %v", err)
	}
}

func TestServerExchangeRefuses(t *testing.T) {
	v := rfcVerifier(t)
	wrong, _ := NewSCRAMVerifier("pencil2", v.Salt, 4096)
	tests := []struct {
		name        string
		v           Verifier
		mock        bool
		first       string
		final       string
		wantFailed  bool // ErrAuthFailed (28P01) rather than malformed
		failAtFirst bool
	}{
		{name: "wrong password", v: wrong, first: rfcClientFirst, final: rfcClientFinal, wantFailed: true},
		{name: "mock verifier", v: v, mock: true, first: rfcClientFirst, final: rfcClientFinal, wantFailed: true},
		{name: "tampered proof", v: v, first: rfcClientFirst, final: strings.Replace(rfcClientFinal, "p=dHz", "p=dHy", 1), wantFailed: true},
		{name: "channel binding requested", v: v, first: "p=tls-server-end-point,,n=,r=abc", failAtFirst: true},
		{name: "authzid", v: v, first: "n,a=admin,n=,r=abc", failAtFirst: true},
		{name: "mandatory extension", v: v, first: "n,,m=x,n=,r=abc", failAtFirst: true},
		{name: "no nonce", v: v, first: "n,,n=user", failAtFirst: true},
		{name: "bad flag", v: v, first: "x,,n=,r=abc", failAtFirst: true},
		{name: "nonce mismatch", v: v, first: rfcClientFirst, final: strings.Replace(rfcClientFinal, "k0,p", "k1,p", 1)},
		{name: "binding flag changed", v: v, first: rfcClientFirst, final: strings.Replace(rfcClientFinal, "c=biws", "c=eSws", 1)},
		{name: "no proof", v: v, first: rfcClientFirst, final: "c=biws,r=" + rfcClientNonce + rfcServerNonce},
		{name: "short proof", v: v, first: rfcClientFirst, final: "c=biws,r=" + rfcClientNonce + rfcServerNonce + ",p=AAAA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := NewServerExchange(tt.v, tt.mock, rfcServerNonce)
			_, err := e.ClientFirst([]byte(tt.first))
			if tt.failAtFirst {
				var me *MalformedError
				if !errors.As(err, &me) {
					t.Fatalf("ClientFirst error = %v, want malformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fin, _, err := e.ClientFinal([]byte(tt.final))
			if fin != nil {
				t.Fatalf("server-final %q sent for a refused proof", fin)
			}
			var me *MalformedError
			switch {
			case tt.wantFailed && !errors.Is(err, ErrAuthFailed):
				t.Fatalf("err = %v, want ErrAuthFailed", err)
			case !tt.wantFailed && !errors.As(err, &me):
				t.Fatalf("err = %v, want malformed", err)
			}
		})
	}
}

func TestMockVerifierIsStable(t *testing.T) {
	a, b := MockVerifier([]byte("k"), "alice"), MockVerifier([]byte("k"), "alice")
	if a.String() != b.String() {
		t.Errorf("mock verifier changes between logins: a probe could tell it from a real one")
	}
	if MockVerifier([]byte("k"), "bob").String() == a.String() || MockVerifier([]byte("k2"), "alice").String() == a.String() {
		t.Errorf("mock verifier does not depend on user and secret")
	}
}

func TestClientExchangeRefusesOtherVerifier(t *testing.T) {
	v := rfcVerifier(t)
	keys := Keys{Salt: v.Salt, Iterations: 4096}
	c := NewClientExchange(keys, rfcClientNonce)
	c.First()
	if _, err := c.ServerFirst([]byte(strings.Replace(rfcServerFirst, "i=4096", "i=8192", 1))); !errors.Is(err, ErrVerifierMismatch) {
		t.Errorf("other iterations: %v", err)
	}
	c = NewClientExchange(keys, rfcClientNonce)
	c.First()
	if _, err := c.ServerFirst([]byte("r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")); err == nil {
		t.Errorf("server nonce without the client's prefix accepted")
	}
	if err := c.ServerFinal([]byte("e=invalid-proof")); err == nil {
		t.Errorf("server error accepted")
	}
}

func TestMD5Response(t *testing.T) {
	// md5 of "md5-secret"+"app_md5" then of that hex + salt, as libpq does.
	hash := MD5Hash("app_md5", "md5-secret")
	if len(hash) != 32 {
		t.Fatalf("hash %q", hash)
	}
	r := MD5Response(hash, [4]byte{1, 2, 3, 4})
	if !strings.HasPrefix(r, "md5") || len(r) != 35 || r == MD5Response(hash, [4]byte{1, 2, 3, 5}) {
		t.Errorf("response %q", r)
	}
	// Known value: PostgreSQL's md5 of user "postgres" password "postgres".
	if got := MD5Hash("postgres", "postgres"); got != "3175bce1d3201d16594cebf9d7eb3f9d" {
		t.Errorf("MD5Hash = %s", got)
	}
}

func mustSalted(t *testing.T, pw string, salt []byte, iter int) []byte {
	t.Helper()
	v, err := NewSCRAMVerifier(pw, salt, iter)
	if err != nil {
		t.Fatal(err)
	}
	_ = v
	k, err := saltedPassword(pw, salt, iter)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestClientExchangeFromPassword: keys derived from a password once the
// server names salt and iterations log in like the recovered ones.
func TestClientExchangeFromPassword(t *testing.T) {
	v := rfcVerifier(t)
	var asked []int
	c := NewClientExchangeFunc(func(salt []byte, iter int) (Keys, error) {
		asked = append(asked, iter)
		return NewSCRAMKeys("pencil", salt, iter)
	}, rfcClientNonce)
	s := NewServerExchange(v, false, rfcServerNonce)
	sf, err := s.ClientFirst(c.First())
	if err != nil {
		t.Fatal(err)
	}
	fin, err := c.ServerFirst(sf)
	if err != nil {
		t.Fatal(err)
	}
	sfin, _, err := s.ClientFinal(fin)
	if err != nil {
		t.Fatalf("server refused the password's proof: %v", err)
	}
	if err := c.ServerFinal(sfin); err != nil {
		t.Fatal(err)
	}
	if len(asked) != 1 || asked[0] != 4096 {
		t.Errorf("keys derived for %v, want once for 4096", asked)
	}
	c = NewClientExchangeFunc(func(salt []byte, iter int) (Keys, error) { return NewSCRAMKeys("pencil", salt, iter) }, rfcClientNonce)
	c.First()
	if _, err := c.ServerFirst([]byte(strings.Replace(rfcServerFirst, "i=4096", "i=2000000000", 1))); err == nil {
		t.Errorf("a server asking for 2e9 iterations was obliged")
	}
	if _, err := NewSCRAMKeys("pässword", []byte("s"), 4096); !errors.Is(err, ErrPasswordNotASCII) {
		t.Errorf("non-ASCII password: %v, want ErrPasswordNotASCII", err)
	}
}
