package cpio

import (
	"bytes"
	"errors"
	"testing"
)

func TestWriter(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	w.Add("a", ModeFile|0o644, []byte("xyz"), 0, 0)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := "070701" + "00000001" + "000081a4" + "00000000" + "00000000" + "00000001" + "00000000" + "00000003" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000002" + "00000000" + "a\x00" + "xyz\x00" +
		"070701" + "00000001" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" + "00000000" +
		"00000000" + "00000000" + "00000000" + "00000000" + "0000000b" + "00000000" + "TRAILER!!!\x00" + "\x00\x00\x00"
	if b.String() != want {
		t.Errorf("archive\n%q\nwant\n%q", b.String(), want)
	}
	if b.Len()%4 != 0 {
		t.Errorf("archive of %d bytes is not padded to 4", b.Len())
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriterKeepsFirstError(t *testing.T) {
	w := NewWriter(failWriter{})
	w.Add("a", ModeFile, nil, 0, 0)
	if err := w.Close(); err == nil || err.Error() != "disk full" {
		t.Errorf("Close: %v", err)
	}
}
