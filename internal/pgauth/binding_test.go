package pgauth

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
)

func readCert(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", name)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTLSServerEndPoint checks RFC 5929's hash choice against digests
// computed by openssl (`openssl x509 -noout -fingerprint -sha256` etc.) of
// certificates it made: the signature's hash, SHA-256 in place of SHA-1.
func TestTLSServerEndPoint(t *testing.T) {
	tests := []struct {
		file string
		want string // openssl's fingerprint with the hash RFC 5929 picks
	}{
		{"ecdsa-sha256.pem", "E2:93:FA:95:2C:BF:75:8A:CE:EC:37:6C:28:43:22:72:84:01:04:FE:09:FA:AD:03:F0:66:46:5F:5E:B2:7C:5F"},
		{"ecdsa-sha384.pem", "A8:8E:E9:23:12:DA:EE:21:79:A3:B0:14:2C:D7:F8:67:AD:AE:B2:3D:29:EE:5C:6C:04:92:BB:64:CC:B9:AD:D0:8A:86:6A:54:11:F9:9D:6F:1F:79:C7:7D:59:5A:53:C0"},
		{"rsa-sha512.pem", "42:D6:CC:97:14:1C:FA:58:29:F3:5C:24:24:D6:4E:DC:97:A6:13:01:D0:E9:6F:95:4C:54:EC:3E:DE:C7:BE:50:2F:63:5E:41:09:56:39:E2:B2:FD:E3:BA:2D:2A:C5:D3:4F:3C:6E:E4:7E:4F:F0:78:4C:4C:79:36:56:FA:98:F4"},
		// Signed with SHA-1: hashed with SHA-256.
		{"rsa-sha1.pem", "C1:66:F2:80:DC:CF:F8:6F:94:54:C7:A6:DB:BF:7E:82:A4:11:61:8F:F1:1E:0E:4C:61:F8:99:96:97:04:69:AE"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := TLSServerEndPoint(readCert(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			want, _ := hex.DecodeString(strings.ReplaceAll(tt.want, ":", ""))
			if string(got) != string(want) {
				t.Errorf("binding %X, want %s", got, tt.want)
			}
		})
	}
	if _, err := TLSServerEndPoint(readCert(t, "ed25519.pem")); err == nil {
		t.Errorf("Ed25519 certificate: a binding was made up; RFC 5929 defines none")
	}
}

// plusPair runs a client and a server exchange against each other;
// serverBinding is what the server offered (nil: no -PLUS), and the client
// binds to clientBinding when it is not nil.
func plusPair(t *testing.T, serverBinding, clientBinding []byte) ([]byte, error) {
	t.Helper()
	v := rfcVerifier(t)
	salted := mustSalted(t, "pencil", v.Salt, 4096)
	keys := Keys{ClientKey: hmacSum(salted, "Client Key"), ServerKey: v.ServerKey, Salt: v.Salt, Iterations: 4096}
	c := NewClientExchange(keys, rfcClientNonce)
	mech := Mechanism
	if clientBinding != nil {
		c.BindChannel(clientBinding)
		mech = MechanismPlus
	}
	s := NewServerExchange(v, false, rfcServerNonce)
	if err := s.SelectMechanism(mech, serverBinding); err != nil {
		return nil, err
	}
	sf, err := s.ClientFirst(c.First())
	if err != nil {
		return nil, err
	}
	cf, err := c.ServerFirst(sf)
	if err != nil {
		t.Fatal(err)
	}
	fin, got, err := s.ClientFinal(cf)
	if err != nil {
		return cf, err
	}
	if got.ClientKey != keys.ClientKey {
		t.Errorf("server recovered another ClientKey")
	}
	if err := c.ServerFinal(fin); err != nil {
		t.Errorf("client refused the server's signature: %v", err)
	}
	return cf, nil
}

func TestServerExchangePlus(t *testing.T) {
	hash := []byte("0123456789abcdef0123456789abcdef")
	cf, err := plusPair(t, hash, hash)
	if err != nil {
		t.Fatalf("bound login refused: %v", err)
	}
	// The c= attribute is the GS2 header and the certificate hash.
	want := "c=" + base64.StdEncoding.EncodeToString([]byte("p=tls-server-end-point,,"+string(hash))) + ","
	if !strings.HasPrefix(string(cf), want) {
		t.Errorf("client-final %q does not start with %q", cf, want)
	}
	other := []byte("fedcba9876543210fedcba9876543210")
	if _, err := plusPair(t, hash, other); !errors.Is(err, ErrBindingMismatch) {
		t.Errorf("another certificate's hash: %v, want ErrBindingMismatch", err)
	}
	if _, err := plusPair(t, nil, hash); err == nil {
		t.Errorf("-PLUS selected though the server did not offer it")
	}
	if _, err := plusPair(t, hash, nil); err != nil {
		t.Errorf("a client that cannot bind (n) refused: %v", err)
	}
	if got := ServerMechanisms(hash); len(got) != 2 || got[0] != MechanismPlus || got[1] != Mechanism {
		t.Errorf("ServerMechanisms with binding = %v", got)
	}
	if got := ServerMechanisms(nil); len(got) != 1 || got[0] != Mechanism {
		t.Errorf("ServerMechanisms without binding = %v", got)
	}
}

func TestServerExchangePlusRefuses(t *testing.T) {
	hash := []byte("0123456789abcdef0123456789abcdef")
	tests := []struct {
		name    string
		mech    string
		binding []byte // offered by the server
		first   string
		final   string // "" when ClientFirst must fail
		want    error  // nil: any MalformedError
	}{
		{name: "downgrade y after -PLUS was offered", mech: Mechanism, binding: hash, first: "y,,n=,r=abc", want: ErrBindingDowngrade},
		{name: "-PLUS without binding data", mech: MechanismPlus, binding: hash, first: "n,,n=,r=abc"},
		{name: "-PLUS with y", mech: MechanismPlus, binding: hash, first: "y,,n=,r=abc"},
		{name: "binding data without -PLUS", mech: Mechanism, binding: hash, first: "p=tls-server-end-point,,n=,r=abc"},
		{name: "other binding type", mech: MechanismPlus, binding: hash, first: "p=tls-unique,,n=,r=abc"},
		{name: "binding type without comma", mech: MechanismPlus, binding: hash, first: "p=tls-server-end-point"},
		{name: "authzid after binding type", mech: MechanismPlus, binding: hash, first: "p=tls-server-end-point,a=x,n=,r=abc"},
		{name: "unknown mechanism", mech: "SCRAM-SHA-1", binding: hash, first: "n,,n=,r=abc"},
		{name: "bare gs2 header as binding", mech: MechanismPlus, binding: hash, first: "p=tls-server-end-point,,n=,r=abc",
			final: "c=" + base64.StdEncoding.EncodeToString([]byte("p=tls-server-end-point,,")) + ",r=abc" + rfcServerNonce + ",p=" + base64.StdEncoding.EncodeToString(hash), want: ErrBindingMismatch},
		{name: "binding flag changed to n", mech: MechanismPlus, binding: hash, first: "p=tls-server-end-point,,n=,r=abc",
			final: "c=biws,r=abc" + rfcServerNonce + ",p=" + base64.StdEncoding.EncodeToString(hash), want: ErrBindingMismatch},
		{name: "y without -PLUS offered, final says n", mech: Mechanism, first: "y,,n=,r=abc",
			final: "c=biws,r=abc" + rfcServerNonce + ",p=" + base64.StdEncoding.EncodeToString(hash)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := NewServerExchange(rfcVerifier(t), false, rfcServerNonce)
			err := e.SelectMechanism(tt.mech, tt.binding)
			if err == nil {
				_, err = e.ClientFirst([]byte(tt.first))
			}
			if tt.final != "" {
				if err != nil {
					t.Fatalf("ClientFirst: %v", err)
				}
				_, _, err = e.ClientFinal([]byte(tt.final))
			}
			var me *MalformedError
			switch {
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Fatalf("err = %v, want %v", err, tt.want)
			case tt.want == nil && !errors.As(err, &me):
				t.Fatalf("err = %v, want malformed", err)
			}
		})
	}
}

// TestClientExchangeFlags: the client's GS2 flag says what it can do.
func TestClientExchangeFlags(t *testing.T) {
	keys := Keys{Salt: []byte("s"), Iterations: 4096}
	c := NewClientExchange(keys, "nonce")
	if got := string(c.First()); got != "n,,n=,r=nonce" {
		t.Errorf("plain: %q", got)
	}
	c = NewClientExchange(keys, "nonce")
	c.CouldBind()
	if got := string(c.First()); got != "y,,n=,r=nonce" {
		t.Errorf("TLS without -PLUS offered: %q", got)
	}
	fin, err := c.ServerFirst([]byte("r=nonceXY,s=cw==,i=4096"))
	if err != nil || !strings.HasPrefix(string(fin), "c=eSws,") {
		t.Errorf("y client-final %q, %v", fin, err)
	}
	c = NewClientExchange(keys, "nonce")
	c.BindChannel([]byte{1, 2})
	if got := string(c.First()); got != "p=tls-server-end-point,,n=,r=nonce" {
		t.Errorf("bound: %q", got)
	}
}

// FuzzServerExchangePlus: the channel-binding header of any client-first
// message is parsed without a panic, and what ClientFirst accepts agrees
// with the mechanism: -PLUS only with "p=tls-server-end-point", and no
// "y" once -PLUS was offered.
func FuzzServerExchangePlus(f *testing.F) {
	f.Add(uint8(1), "p=tls-server-end-point,,n=,r=abc", "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=,r=abc"+rfcServerNonce+",p=AAAA")
	f.Add(uint8(0), "y,,n=,r=abc", "c=eSws,r=abc"+rfcServerNonce+",p=AAAA")
	f.Add(uint8(2), "n,,n=,r=abc", "c=biws,r=abc"+rfcServerNonce+",p=AAAA")
	f.Add(uint8(1), "p=tls-unique,,n=,r=abc", "")
	f.Fuzz(func(t *testing.T, mode uint8, first, final string) {
		binding := []byte("0123456789abcdef0123456789abcdef")
		mech := Mechanism
		switch mode % 3 {
		case 1:
			mech = MechanismPlus
		case 2:
			binding = nil
		}
		e := NewServerExchange(Verifier{Kind: KindSCRAM, Iterations: 4096, Salt: []byte("salt")}, false, rfcServerNonce)
		if err := e.SelectMechanism(mech, binding); err != nil {
			t.Fatalf("SelectMechanism(%s): %v", mech, err)
		}
		if _, err := e.ClientFirst([]byte(first)); err != nil {
			return
		}
		if mech == MechanismPlus && !strings.HasPrefix(first, "p=tls-server-end-point,") {
			t.Fatalf("-PLUS accepted client-first %q", first)
		}
		if mech == Mechanism && (strings.HasPrefix(first, "p") || (binding != nil && strings.HasPrefix(first, "y"))) {
			t.Fatalf("SCRAM-SHA-256 with binding offered=%v accepted client-first %q", binding != nil, first)
		}
		if _, _, err := e.ClientFinal([]byte(final)); err == nil {
			t.Fatalf("a proof passed against an all-zero StoredKey")
		}
	})
}
