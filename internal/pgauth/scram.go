package pgauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Mechanism is the SASL mechanism name of SCRAM-SHA-256 without channel
// binding.
const Mechanism = "SCRAM-SHA-256"

// ErrAuthFailed is a wrong proof (or a proof against a mock verifier): the
// client is told 28P01.
var ErrAuthFailed = errors.New("password authentication failed")

// MalformedError is a SCRAM message that does not follow RFC 5802; the
// client is told 08P01, as PostgreSQL does.
type MalformedError struct{ Msg string }

func (e *MalformedError) Error() string { return "malformed SCRAM message: " + e.Msg }

func malformed(format string, args ...any) error {
	return &MalformedError{Msg: fmt.Sprintf(format, args...)}
}

// clip shortens a client-chosen string quoted in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Keys is what a successful SCRAM login leaves: the client's ClientKey,
// recovered from its proof, and the verifier's ServerKey, salt and
// iteration count. With them the proxy can run SCRAM as that client
// against any server holding the same verifier. They must stay in memory.
type Keys struct {
	ClientKey  [KeyLen]byte
	ServerKey  [KeyLen]byte
	Salt       []byte
	Iterations int
}

func hmacSum(key []byte, msg string) [KeyLen]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	var out [KeyLen]byte
	m.Sum(out[:0])
	return out
}

func xor(dst, a, b *[KeyLen]byte) {
	for i := range dst {
		dst[i] = a[i] ^ b[i]
	}
}

// MockIterations is the iteration count of a mock verifier, PostgreSQL's
// default scram_iterations.
const MockIterations = 4096

// MockVerifier is the verifier a server pretends a user has when it has
// none (unknown user, or no SCRAM secret): salt and keys derived from a
// server secret and the user name, so the same user always gets the same
// salt and the exchange cannot be told from a real one until the proof
// fails, as PostgreSQL does with its mock authentication nonce.
func MockVerifier(secret []byte, user string) Verifier {
	salt := hmacSum(secret, "salt\x00"+user)
	v := Verifier{Kind: KindSCRAM, Iterations: MockIterations, Salt: salt[:16]}
	v.StoredKey = hmacSum(secret, "stored\x00"+user)
	v.ServerKey = hmacSum(secret, "server\x00"+user)
	return v
}

// printableNonce reports whether s is a valid SCRAM nonce: printable ASCII
// except ",".
func printableNonce(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == ',' {
			return false
		}
	}
	return true
}

// ServerExchange is the server side of one SCRAM-SHA-256 exchange.
type ServerExchange struct {
	v           Verifier
	mock        bool // the verifier is a mock: the proof must fail
	serverNonce string

	// Set by SelectMechanism.
	binding []byte // tls-server-end-point data: SCRAM-SHA-256-PLUS was offered
	plus    bool   // the client selected SCRAM-SHA-256-PLUS

	gs2Header       string
	clientFirstBare string
	nonce           string // client's nonce + serverNonce
	serverFirst     string
}

// NewServerExchange starts an exchange against v (a KindSCRAM verifier).
// mock says v is a MockVerifier, so that no proof can pass. serverNonce
// must be a fresh random printable nonce (see printableNonce) for every
// exchange.
func NewServerExchange(v Verifier, mock bool, serverNonce string) *ServerExchange {
	return &ServerExchange{v: v, mock: mock, serverNonce: serverNonce}
}

// ServerMechanisms returns the SASL mechanisms a server offers:
// SCRAM-SHA-256-PLUS first when it has channel-binding data (a TLS
// connection whose certificate has a tls-server-end-point hash), as
// PostgreSQL lists them, then SCRAM-SHA-256.
func ServerMechanisms(binding []byte) []string {
	if binding != nil {
		return []string{MechanismPlus, Mechanism}
	}
	return []string{Mechanism}
}

// SelectMechanism takes the mechanism the client's SASLInitialResponse
// names. binding is the tls-server-end-point data of the server's
// certificate when the server offered SCRAM-SHA-256-PLUS
// (ServerMechanisms(binding)), nil when it did not. Without a call the
// exchange is SCRAM-SHA-256 with no binding offered.
func (e *ServerExchange) SelectMechanism(mechanism string, binding []byte) error {
	switch {
	case mechanism == Mechanism:
	case mechanism == MechanismPlus && binding != nil:
		e.plus = true
	default:
		return malformed("client selected an invalid SASL authentication mechanism")
	}
	e.binding = binding
	return nil
}

// ClientFirst takes the client-first-message (the SASLInitialResponse's
// data) and returns the server-first-message. Its GS2 channel-binding
// flag must agree with the mechanism: "p=tls-server-end-point" with
// SCRAM-SHA-256-PLUS; "n" or "y" with SCRAM-SHA-256, and "y" (the client
// could bind but thinks the server cannot) is ErrBindingDowngrade when
// SCRAM-SHA-256-PLUS was offered.
func (e *ServerExchange) ClientFirst(msg []byte) ([]byte, error) {
	if !printableNonce(e.serverNonce) {
		return nil, errors.New("pgauth: invalid server nonce")
	}
	s := string(msg)
	var gs2 string
	switch {
	case strings.HasPrefix(s, "n,"), strings.HasPrefix(s, "y,"):
		if e.plus {
			return nil, malformed("the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data")
		}
		if s[0] == 'y' && e.binding != nil {
			return nil, ErrBindingDowngrade
		}
		gs2, s = s[:2], s[2:]
	case strings.HasPrefix(s, "p="):
		if !e.plus {
			return nil, malformed("the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data")
		}
		typ, _, ok := strings.Cut(s[2:], ",")
		if !ok {
			return nil, malformed("comma expected after the channel-binding type")
		}
		if typ != BindingType {
			return nil, malformed("unsupported SCRAM channel-binding type %q", clip(typ))
		}
		gs2, s = s[:len("p=")+len(typ)+1], s[len("p=")+len(typ)+1:]
	default:
		return nil, malformed("unexpected channel-binding flag")
	}
	if strings.HasPrefix(s, "a=") {
		return nil, malformed("client uses authorization identity, which is not supported")
	}
	if !strings.HasPrefix(s, ",") {
		return nil, malformed("comma expected after the channel-binding flag")
	}
	gs2 += ","
	bare := s[1:]
	attrs := strings.Split(bare, ",")
	if len(attrs) > 0 && strings.HasPrefix(attrs[0], "m=") {
		return nil, malformed("client requires an unsupported SCRAM extension")
	}
	// The user name is ignored: the startup packet's is the one that
	// counts, as in PostgreSQL (libpq sends "n=").
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "n=") || !strings.HasPrefix(attrs[1], "r=") {
		return nil, malformed("expected n= and r= attributes")
	}
	clientNonce := attrs[1][2:]
	if !printableNonce(clientNonce) {
		return nil, malformed("invalid client nonce")
	}
	e.gs2Header = gs2
	e.clientFirstBare = bare
	e.nonce = clientNonce + e.serverNonce
	e.serverFirst = "r=" + e.nonce + ",s=" + base64.StdEncoding.EncodeToString(e.v.Salt) + ",i=" + strconv.Itoa(e.v.Iterations)
	return []byte(e.serverFirst), nil
}

// ClientFinal takes the client-final-message and, when the proof is right,
// returns the server-final-message and the client's Keys. A wrong proof
// returns ErrAuthFailed; the work done is the same either way.
func (e *ServerExchange) ClientFinal(msg []byte) ([]byte, Keys, error) {
	if e.serverFirst == "" {
		return nil, Keys{}, errors.New("pgauth: ClientFinal before ClientFirst")
	}
	s := string(msg)
	i := strings.LastIndex(s, ",p=")
	if i < 0 {
		return nil, Keys{}, malformed("missing proof")
	}
	withoutProof, proofB64 := s[:i], s[i+3:]
	attrs := strings.Split(withoutProof, ",")
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "c=") || !strings.HasPrefix(attrs[1], "r=") {
		return nil, Keys{}, malformed("expected c= and r= attributes")
	}
	cbind, err := base64.StdEncoding.Strict().DecodeString(attrs[0][2:])
	switch {
	case e.plus:
		// The GS2 header again, then the certificate hash the client saw:
		// another one means its TLS channel ends elsewhere.
		want := e.gs2Header + string(e.binding)
		if err != nil || string(cbind) != want {
			return nil, Keys{}, ErrBindingMismatch
		}
	case err != nil || string(cbind) != e.gs2Header:
		return nil, Keys{}, malformed("unexpected SCRAM channel-binding attribute in client-final-message")
	}
	if attrs[1][2:] != e.nonce {
		return nil, Keys{}, malformed("nonce mismatch")
	}
	proofBytes, err := base64.StdEncoding.Strict().DecodeString(proofB64)
	if err != nil || len(proofBytes) != KeyLen {
		return nil, Keys{}, malformed("invalid proof")
	}
	var proof [KeyLen]byte
	copy(proof[:], proofBytes)

	authMessage := e.clientFirstBare + "," + e.serverFirst + "," + withoutProof
	clientSignature := hmacSum(e.v.StoredKey[:], authMessage)
	var clientKey [KeyLen]byte
	xor(&clientKey, &proof, &clientSignature)
	stored := sha256.Sum256(clientKey[:])
	ok := subtle.ConstantTimeCompare(stored[:], e.v.StoredKey[:]) == 1
	serverSignature := hmacSum(e.v.ServerKey[:], authMessage)
	if !ok || e.mock {
		return nil, Keys{}, ErrAuthFailed
	}
	keys := Keys{ClientKey: clientKey, ServerKey: e.v.ServerKey, Salt: e.v.Salt, Iterations: e.v.Iterations}
	return []byte("v=" + base64.StdEncoding.EncodeToString(serverSignature[:])), keys, nil
}

// ErrVerifierMismatch means a server offered another salt or iteration
// count than the verifier the client logged in against: its secret for the
// user differs (the password was changed, or the server is not of this
// cluster), so the ClientKey cannot work there.
var ErrVerifierMismatch = errors.New("the server's SCRAM secret for this user differs from the one the proxy authenticated the client against")

// ClientExchange is the client side of one SCRAM-SHA-256 exchange, run
// with a ClientKey instead of a password.
type ClientExchange struct {
	keys            Keys
	keysFor         func(salt []byte, iterations int) (Keys, error) // nil: keys is set
	clientNonce     string
	gs2Header       string // "n,,", "y,," or gs2Plus; set by First
	cbindInput      string // gs2Header, then the binding data with -PLUS
	clientFirstBare string
	serverSignature [KeyLen]byte
	sentFinal       bool
}

// NewClientExchange starts an exchange with keys; clientNonce must be a
// fresh random printable nonce.
func NewClientExchange(keys Keys, clientNonce string) *ClientExchange {
	return &ClientExchange{keys: keys, clientNonce: clientNonce}
}

// NewClientExchangeFunc starts an exchange whose keys are derived when
// the server-first-message gives the salt and iteration count: keysFor
// gets them and returns the Keys (from a password, say: NewSCRAMKeys).
func NewClientExchangeFunc(keysFor func(salt []byte, iterations int) (Keys, error), clientNonce string) *ClientExchange {
	return &ClientExchange{keysFor: keysFor, clientNonce: clientNonce}
}

// BindChannel makes the exchange SCRAM-SHA-256-PLUS, bound to the TLS
// channel whose server certificate has tls-server-end-point data binding
// (TLSServerEndPoint). Call it before First, only when the server offered
// MechanismPlus, and name MechanismPlus in the SASLInitialResponse.
func (c *ClientExchange) BindChannel(binding []byte) {
	c.cbindInput = gs2Plus + string(binding)
	c.gs2Header = gs2Plus
}

// CouldBind tells the exchange, before First, that the connection is TLS
// but the server did not offer SCRAM-SHA-256-PLUS: the client says "y",
// so that a server which does support binding can see that an attacker
// removed it from the offer.
func (c *ClientExchange) CouldBind() {
	c.gs2Header, c.cbindInput = "y,,", "y,,"
}

// First returns the client-first-message: the channel-binding flag ("n"
// unless BindChannel or CouldBind said otherwise), and an empty user name
// (the server takes the startup packet's), as libpq sends.
func (c *ClientExchange) First() []byte {
	if c.gs2Header == "" {
		c.gs2Header, c.cbindInput = "n,,", "n,,"
	}
	c.clientFirstBare = "n=,r=" + c.clientNonce
	return []byte(c.gs2Header + c.clientFirstBare)
}

// ServerFirst takes the server-first-message and returns the
// client-final-message.
func (c *ClientExchange) ServerFirst(msg []byte) ([]byte, error) {
	if c.clientFirstBare == "" {
		return nil, errors.New("pgauth: ServerFirst before First")
	}
	attrs := strings.Split(string(msg), ",")
	if len(attrs) < 3 || !strings.HasPrefix(attrs[0], "r=") || !strings.HasPrefix(attrs[1], "s=") || !strings.HasPrefix(attrs[2], "i=") {
		return nil, malformed("server-first-message: expected r=, s= and i=")
	}
	nonce := attrs[0][2:]
	if !strings.HasPrefix(nonce, c.clientNonce) || len(nonce) == len(c.clientNonce) || !printableNonce(nonce) {
		return nil, malformed("server-first-message: invalid nonce")
	}
	salt, err := base64.StdEncoding.Strict().DecodeString(attrs[1][2:])
	if err != nil {
		return nil, malformed("server-first-message: invalid salt")
	}
	iter, err := strconv.Atoi(attrs[2][2:])
	if err != nil || iter < 1 {
		return nil, malformed("server-first-message: invalid iteration count")
	}
	if c.keysFor != nil {
		if c.keys, err = c.keysFor(salt, iter); err != nil {
			return nil, err
		}
	}
	if iter != c.keys.Iterations || subtle.ConstantTimeCompare(salt, c.keys.Salt) != 1 {
		return nil, ErrVerifierMismatch
	}
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte(c.cbindInput)) + ",r=" + nonce
	authMessage := c.clientFirstBare + "," + string(msg) + "," + withoutProof
	storedKey := sha256.Sum256(c.keys.ClientKey[:])
	clientSignature := hmacSum(storedKey[:], authMessage)
	var proof [KeyLen]byte
	xor(&proof, &c.keys.ClientKey, &clientSignature)
	c.serverSignature = hmacSum(c.keys.ServerKey[:], authMessage)
	c.sentFinal = true
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof[:])), nil
}

// ServerFinal checks the server-final-message's signature: a server that
// does not know the ServerKey (an impostor) is refused.
func (c *ClientExchange) ServerFinal(msg []byte) error {
	if !c.sentFinal {
		return errors.New("pgauth: ServerFinal before ServerFirst")
	}
	s := string(msg)
	if e, ok := strings.CutPrefix(s, "e="); ok {
		return fmt.Errorf("server refused the SCRAM proof: %s", e)
	}
	v, ok := strings.CutPrefix(s, "v=")
	if !ok {
		return malformed("server-final-message: expected v=")
	}
	if i := strings.IndexByte(v, ','); i >= 0 {
		v = v[:i]
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(v)
	if err != nil || subtle.ConstantTimeCompare(sig, c.serverSignature[:]) != 1 {
		return errors.New("the server's SCRAM signature is wrong: it does not hold this user's verifier")
	}
	return nil
}
