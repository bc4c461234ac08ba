package ctl_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/ctl"
)

func TestParseSchedule(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"+10m", now.Add(10 * time.Minute)},
		{"2026-11-22T03:00:00Z", time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)},
	} {
		if got, err := ctl.ParseSchedule(tc.in, now); err != nil || !got.Equal(tc.want) {
			t.Errorf("ParseSchedule(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"+soon", "tomorrow", "2026-11-22 03:00", ""} {
		if _, err := ctl.ParseSchedule(in, now); err == nil || !strings.Contains(err.Error(), strconv.Quote(in)) {
			t.Errorf("ParseSchedule(%q): err = %v, want one quoting the input", in, err)
		}
	}
}
