package agent

import (
	"fmt"
	"io"
	"strings"
)

// Guest vsock ports the agent listens on.
const (
	AgentPort = 1024 // ttrpc Agent service
	StdioPort = 1025 // one connection per stdio stream, opened with a StdioHeader
	// ForwardPort: one connection per port-forwarded TCP connection, opened
	// with a ForwardHeader and answered with a ForwardReply.
	ForwardPort = 1026
)

// Stream names one stdio stream of a process.
type Stream string

const (
	StreamStdin  Stream = "stdin"
	StreamStdout Stream = "stdout"
	StreamStderr Stream = "stderr"
)

const stdioMagic = "contrast-stdio/1"

// maxHeaderLen bounds what the agent reads before it knows who is talking.
const maxHeaderLen = 512

// StdioHeader is the first line the host writes on a stdio connection; after
// it the connection carries the raw bytes of that one stream. For stdin the host
// writes and closes its write side at EOF; for stdout and stderr the agent writes
// and closes the connection after the last byte.
type StdioHeader struct {
	ContainerID string
	ExecID      string // empty for the container's init process
	Stream      Stream
}

// WriteTo writes the header line.
func (h StdioHeader) WriteTo(w io.Writer) (int64, error) {
	if err := h.validate(); err != nil {
		return 0, err
	}
	exec := h.ExecID
	if exec == "" {
		exec = "-"
	}
	n, err := fmt.Fprintf(w, "%s %s %s %s\n", stdioMagic, h.ContainerID, exec, h.Stream)
	return int64(n), err
}

// ReadStdioHeader reads one header line byte by byte, so nothing of the stream
// that follows is consumed.
func ReadStdioHeader(r io.Reader) (StdioHeader, error) {
	line, err := readLine(r, "stdio header")
	if err != nil {
		return StdioHeader{}, err
	}
	return ParseStdioHeader(line)
}

// ParseStdioHeader parses a header line without its newline.
func ParseStdioHeader(line string) (StdioHeader, error) {
	fields := strings.Split(line, " ")
	if len(fields) != 4 || fields[0] != stdioMagic {
		return StdioHeader{}, fmt.Errorf("malformed stdio header %q: want %q <container> <exec|-> <stream>", line, stdioMagic)
	}
	h := StdioHeader{ContainerID: fields[1], ExecID: fields[2], Stream: Stream(fields[3])}
	if h.ExecID == "-" {
		h.ExecID = ""
	}
	if err := h.validate(); err != nil {
		return StdioHeader{}, err
	}
	return h, nil
}

func (h StdioHeader) validate() error {
	if err := ValidateID("container id", h.ContainerID); err != nil {
		return err
	}
	if h.ExecID != "" {
		if err := ValidateID("exec id", h.ExecID); err != nil {
			return err
		}
	}
	switch h.Stream {
	case StreamStdin, StreamStdout, StreamStderr:
		return nil
	}
	return fmt.Errorf("stdio header: unknown stream %q", h.Stream)
}

// ValidateID checks a container or exec id as containerd allows them
// (letters, digits, '.', '_', '-'; 1..76 characters), so that an id is safe
// to use in a path or a header line.
func ValidateID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(id) > 76 {
		return fmt.Errorf("%s %q is longer than 76 characters", what, id)
	}
	for i, c := range id {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return fmt.Errorf("%s %q: character %q at %d is not allowed", what, id, c, i)
		}
	}
	return nil
}
