package pgproc

import "testing"

func FuzzParsePid(f *testing.F) {
	for _, s := range []string{"4242\n/data\n", "0", "-1", " 7 ", "x", "", "99999999999999999999"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pid, err := parsePid(b)
		if (err == nil) != (pid > 0) {
			t.Fatalf("parsePid(%q) = %d, %v", b, pid, err)
		}
	})
}
