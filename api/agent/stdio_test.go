package agent

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestStdioHeaderRoundTrip(t *testing.T) {
	for _, h := range []StdioHeader{
		{ContainerID: "c1", Stream: StreamStdout},
		{ContainerID: "abc-def_1.2", ExecID: "exec-7", Stream: StreamStdin},
		{ContainerID: strings.Repeat("a", 76), ExecID: strings.Repeat("b", 76), Stream: StreamStderr},
	} {
		var buf bytes.Buffer
		if _, err := h.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		buf.WriteString("payload")
		got, err := ReadStdioHeader(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if got != h {
			t.Fatalf("read %+v, wrote %+v", got, h)
		}
		// the stream after the header is untouched
		if rest, _ := io.ReadAll(&buf); string(rest) != "payload" {
			t.Fatalf("header read consumed the stream: rest %q", rest)
		}
	}
}

func TestStdioHeaderRejects(t *testing.T) {
	cases := []struct{ line, want string }{
		{"contrast-stdio/1 c1 - stdout", ""},
		{"contrast-stdio/2 c1 - stdout", "malformed stdio header"},
		{"contrast-stdio/1 c1 stdout", "malformed stdio header"},
		{"contrast-stdio/1 ../etc - stdout", "container id"},
		{"contrast-stdio/1 c1 e/1 stdout", "exec id"},
		{"contrast-stdio/1 c1 - stdtty", "unknown stream"},
		{"contrast-stdio/1  - stdout", "container id is empty"},
		{"contrast-stdio/1 -c1 - stdout", "container id"},
	}
	for _, c := range cases {
		_, err := ParseStdioHeader(c.line)
		if c.want == "" {
			if err != nil {
				t.Errorf("%q: %v", c.line, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.line, err, c.want)
		}
	}
	if _, err := ReadStdioHeader(strings.NewReader(strings.Repeat("x", 1000))); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("endless header: %v", err)
	}
	if _, err := ReadStdioHeader(strings.NewReader("contrast-stdio/1 c1")); err == nil {
		t.Error("truncated header accepted")
	}
	if _, err := (StdioHeader{ContainerID: "c 1", Stream: StreamStdout}).WriteTo(io.Discard); err == nil {
		t.Error("header with a space in the id written")
	}
}

func FuzzReadStdioHeader(f *testing.F) {
	f.Add([]byte("contrast-stdio/1 c1 - stdout\nrest"))
	f.Add([]byte("contrast-stdio/1 c1 e1 stdin\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadStdioHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		// whatever parses must survive a round trip
		var buf bytes.Buffer
		if _, err := h.WriteTo(&buf); err != nil {
			t.Fatalf("parsed header %+v does not write: %v", h, err)
		}
		back, err := ReadStdioHeader(&buf)
		if err != nil || back != h {
			t.Fatalf("round trip of %+v: %+v, %v", h, back, err)
		}
	})
}
