package pgproc

import (
	"io"
	"os"
	"strings"
)

// Tail returns the last n bytes of the file at path (a server's log, for
// an error message), white space trimmed at both ends. The error is that
// of opening the file or seeking to its end; a failed read gives what was
// read before it.
func Tail(path string, n int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		if _, err := f.Seek(-n, io.SeekEnd); err != nil {
			return "", err
		}
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return strings.TrimSpace(string(b)), nil
}
