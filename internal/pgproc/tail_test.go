package pgproc

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "log")
	if _, err := Tail(path, 10); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Tail of a missing file: %v, want ErrNotExist", err)
	}
	if err := os.WriteFile(path, []byte("first line\nlast line \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for n, want := range map[int64]string{6: "line", 11: "last line", 100: "first line\nlast line"} {
		if got, err := Tail(path, n); err != nil || got != want {
			t.Errorf("Tail(%d) = %q, %v; want %q", n, got, err, want)
		}
	}
}
