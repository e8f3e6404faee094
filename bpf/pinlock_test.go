package bpf

import (
	"bufio"
	"strings"
	"testing"
)

func TestParseLocks(t *testing.T) {
	locks := `1: POSIX  ADVISORY  WRITE 900 00:28:27245 0 EOF
2: FLOCK  ADVISORY  WRITE 13503 00:28:27245 0 EOF
2: -> FLOCK  ADVISORY  WRITE 777 00:28:27245 0 EOF
3: FLOCK  ADVISORY  WRITE 42 103:02:27245 0 EOF
`
	for _, tc := range []struct {
		major, minor uint32
		ino          uint64
		want         int
	}{
		{0, 0x28, 27245, 13503},
		{0x103, 2, 27245, 42},
		{0, 0x28, 1, 0},
	} {
		if got := parseLocks(bufio.NewScanner(strings.NewReader(locks)), tc.major, tc.minor, tc.ino); got != tc.want {
			t.Errorf("parseLocks(%x:%x:%d) = %d, want %d", tc.major, tc.minor, tc.ino, got, tc.want)
		}
	}
}
