package pgauth

import (
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Kind is the kind of secret a Verifier holds.
type Kind uint8

const (
	KindSCRAM Kind = iota + 1 // SCRAM-SHA-256 verifier
	KindMD5                   // md5(password || user)
)

func (k Kind) String() string {
	switch k {
	case KindSCRAM:
		return "SCRAM-SHA-256"
	case KindMD5:
		return "md5"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// KeyLen is the length of SCRAM-SHA-256 keys and proofs.
const KeyLen = sha256.Size

// Verifier is one role's stored secret, as pg_authid.rolpassword holds it.
type Verifier struct {
	Kind Kind

	// KindSCRAM.
	Iterations int
	Salt       []byte
	StoredKey  [KeyLen]byte
	ServerKey  [KeyLen]byte

	// KindMD5: the 32 lowercase hex digits after "md5".
	MD5 string
}

// Maximum SCRAM iteration count accepted in a verifier. PostgreSQL allows
// up to INT_MAX, but the proxy never runs PBKDF2 itself; the bound only
// keeps a typo from looking like a value.
const maxIterations = 1 << 30

// ParseVerifier reads a verifier in PostgreSQL's text form:
// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (base64) or
// "md5<32 hex digits>". Anything else (a plaintext password, say) is an
// error.
func ParseVerifier(s string) (Verifier, error) {
	if rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$"); ok {
		return parseSCRAM(rest)
	}
	if rest, ok := strings.CutPrefix(s, "md5"); ok && len(rest) == 32 {
		if _, err := hex.DecodeString(rest); err == nil && strings.ToLower(rest) == rest {
			return Verifier{Kind: KindMD5, MD5: rest}, nil
		}
	}
	return Verifier{}, errors.New("not a SCRAM-SHA-256 or md5 verifier (plaintext passwords are not accepted)")
}

func parseSCRAM(s string) (Verifier, error) {
	params, keys, ok := strings.Cut(s, "$")
	if !ok {
		return Verifier{}, errors.New("SCRAM verifier: missing \"$\" before the keys")
	}
	iter, salt, ok := strings.Cut(params, ":")
	if !ok {
		return Verifier{}, errors.New("SCRAM verifier: missing \":\" between iterations and salt")
	}
	n, err := strconv.Atoi(iter)
	if err != nil || n < 1 || n > maxIterations || strconv.Itoa(n) != iter {
		return Verifier{}, fmt.Errorf("SCRAM verifier: invalid iteration count %q", iter)
	}
	v := Verifier{Kind: KindSCRAM, Iterations: n}
	if v.Salt, err = base64.StdEncoding.Strict().DecodeString(salt); err != nil || len(v.Salt) == 0 {
		return Verifier{}, errors.New("SCRAM verifier: invalid salt")
	}
	stored, server, ok := strings.Cut(keys, ":")
	if !ok {
		return Verifier{}, errors.New("SCRAM verifier: missing \":\" between StoredKey and ServerKey")
	}
	if err := decodeKey(&v.StoredKey, stored); err != nil {
		return Verifier{}, fmt.Errorf("SCRAM verifier: StoredKey: %w", err)
	}
	if err := decodeKey(&v.ServerKey, server); err != nil {
		return Verifier{}, fmt.Errorf("SCRAM verifier: ServerKey: %w", err)
	}
	return v, nil
}

func decodeKey(dst *[KeyLen]byte, s string) error {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return fmt.Errorf("not %d bytes of base64", KeyLen)
	}
	copy(dst[:], b)
	return nil
}

// String returns the verifier in PostgreSQL's text form.
func (v Verifier) String() string {
	switch v.Kind {
	case KindSCRAM:
		enc := base64.StdEncoding
		return "SCRAM-SHA-256$" + strconv.Itoa(v.Iterations) + ":" + enc.EncodeToString(v.Salt) + "$" +
			enc.EncodeToString(v.StoredKey[:]) + ":" + enc.EncodeToString(v.ServerKey[:])
	case KindMD5:
		return "md5" + v.MD5
	}
	return ""
}

// NewSCRAMVerifier derives a SCRAM-SHA-256 verifier from a password as
// PostgreSQL does (without SASLprep, which leaves ASCII unchanged). Tests
// use it; the proxy itself never holds a password.
func NewSCRAMVerifier(password string, salt []byte, iterations int) (Verifier, error) {
	salted, err := saltedPassword(password, salt, iterations)
	if err != nil {
		return Verifier{}, err
	}
	clientKey := hmacSum(salted, "Client Key")
	v := Verifier{Kind: KindSCRAM, Iterations: iterations, Salt: append([]byte(nil), salt...)}
	v.StoredKey = sha256.Sum256(clientKey[:])
	v.ServerKey = hmacSum(salted, "Server Key")
	return v, nil
}

// MD5Hash is PostgreSQL's stored md5 secret for user and password, without
// the "md5" prefix: hex(md5(password || user)).
func MD5Hash(user, password string) string {
	sum := md5.Sum([]byte(password + user))
	return hex.EncodeToString(sum[:])
}

// MD5Response is the answer to an AuthenticationMD5Password challenge with
// the given salt, from the stored hash (hex, without "md5"):
// "md5" + hex(md5(hash || salt)).
func MD5Response(hash string, salt [4]byte) string {
	sum := md5.Sum(append([]byte(hash), salt[:]...))
	return "md5" + hex.EncodeToString(sum[:])
}

func saltedPassword(password string, salt []byte, iterations int) ([]byte, error) {
	return pbkdf2.Key(sha256.New, password, salt, iterations, KeyLen)
}

// MaxPasswordIterations bounds the iteration count NewSCRAMKeys accepts,
// so that a server asking for a huge one cannot make a login hash a
// password for minutes (PostgreSQL's default is 4096).
const MaxPasswordIterations = 1 << 20

// ErrPasswordNotASCII is a password SCRAM would first normalise with
// SASLprep, which this package does not do.
var ErrPasswordNotASCII = errors.New("a SCRAM password must be printable ASCII here (others need SASLprep, which pharos does not implement)")

// CheckSCRAMPassword reports whether NewSCRAMKeys derives from password
// what PostgreSQL does: printable ASCII, which SASLprep leaves unchanged.
func CheckSCRAMPassword(password string) error {
	for i := 0; i < len(password); i++ {
		if c := password[i]; c < 0x20 || c > 0x7e {
			return ErrPasswordNotASCII
		}
	}
	return nil
}

// NewSCRAMKeys derives from a password the Keys a SCRAM login with it
// leaves (what a client's proof reveals): tests, and the proxy's login to
// a server for a user whose password it was given (a certificate user).
func NewSCRAMKeys(password string, salt []byte, iterations int) (Keys, error) {
	if iterations < 1 || iterations > MaxPasswordIterations {
		return Keys{}, fmt.Errorf("SCRAM iteration count %d is out of range (1 to %d)", iterations, MaxPasswordIterations)
	}
	if err := CheckSCRAMPassword(password); err != nil {
		return Keys{}, err
	}
	salted, err := saltedPassword(password, salt, iterations)
	if err != nil {
		return Keys{}, err
	}
	return Keys{
		ClientKey:  hmacSum(salted, "Client Key"),
		ServerKey:  hmacSum(salted, "Server Key"),
		Salt:       append([]byte(nil), salt...),
		Iterations: iterations,
	}, nil
}
