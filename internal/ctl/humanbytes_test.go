package ctl

import (
	"strconv"
	"testing"
)

func TestHumanBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int64
		want string
	}{
		{"zero", 0, "0 B"},
		{"bytes", 1023, "1023 B"},
		{"one kB", 1024, "1 kB"},
		{"one and a half kB", 1536, "1.5 kB"},
		{"twelve MB", 12 << 20, "12 MB"},
		{"rounds above ten units", 12<<20 + 400<<10, "12 MB"},
		{"just under ten units rounds up", 10<<10 - 1, "10 kB"},
		{"GB", 3 << 30, "3 GB"},
		{"largest", 1<<63 - 1, "8 EB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := humanBytes(tc.n); got != tc.want {
				t.Errorf("humanBytes(%s) = %q, want %q", strconv.FormatInt(tc.n, 10), got, tc.want)
			}
		})
	}
}
