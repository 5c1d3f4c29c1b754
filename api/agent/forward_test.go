package agent

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestForwardHeaderRoundTrip(t *testing.T) {
	for _, port := range []uint16{1, 80, 8080, 65535} {
		var buf bytes.Buffer
		if _, err := (ForwardHeader{Port: port}).WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		buf.WriteString("payload")
		h, err := ReadForwardHeader(&buf)
		if err != nil || h.Port != port {
			t.Errorf("port %d: read back %+v, %v", port, h, err)
		}
		if buf.String() != "payload" {
			t.Errorf("port %d: the header read consumed the stream: %q left", port, buf.String())
		}
	}
	if _, err := (ForwardHeader{}).WriteTo(&bytes.Buffer{}); err == nil {
		t.Error("header for port 0 written")
	}
}

func TestForwardHeaderRejects(t *testing.T) {
	for _, line := range []string{
		"", "contrast-forward/1", "contrast-forward/1 ", "contrast-forward/1 0", "contrast-forward/1 65536",
		"contrast-forward/1 -1", "contrast-forward/1 +80", "contrast-forward/1 080", "contrast-forward/1 80 81",
		"contrast-forward/2 80", "contrast-stdio/1 c1 - stdout", "contrast-forward/1 0x50",
	} {
		if h, err := ParseForwardHeader(line); err == nil {
			t.Errorf("%q accepted as %+v", line, h)
		}
	}
	if _, err := ReadForwardHeader(strings.NewReader("contrast-forward/1 80")); err == nil {
		t.Error("header without its newline accepted")
	}
	if _, err := ReadForwardHeader(strings.NewReader(strings.Repeat("x", 600) + "\n")); err == nil {
		t.Error("overlong header accepted")
	}
}

func TestForwardReply(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteForwardReply(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if err := WriteForwardReply(&buf, errors.New("policy denies PortForward:\nport 22")); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("stream")
	if err := ReadForwardReply(&buf); err != nil {
		t.Errorf("ok reply read as %v", err)
	}
	err := ReadForwardReply(&buf)
	if err == nil || err.Error() != "policy denies PortForward: port 22" {
		t.Errorf("error reply read as %v", err)
	}
	if buf.String() != "stream" {
		t.Errorf("the reply read consumed the stream: %q left", buf.String())
	}
	if err := ReadForwardReply(strings.NewReader("okay\n")); err == nil {
		t.Error("malformed reply accepted as ok")
	}
}

func FuzzReadForwardHeader(f *testing.F) {
	f.Add([]byte("contrast-forward/1 8080\nrest"))
	f.Add([]byte("contrast-forward/1 65535\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadForwardHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		if h.Port == 0 {
			t.Fatalf("%q parsed to port 0", data)
		}
		var buf bytes.Buffer
		if _, err := h.WriteTo(&buf); err != nil {
			t.Fatalf("parsed header %+v does not write: %v", h, err)
		}
		back, err := ReadForwardHeader(&buf)
		if err != nil || back != h {
			t.Fatalf("round trip of %+v: %+v, %v", h, back, err)
		}
	})
}
