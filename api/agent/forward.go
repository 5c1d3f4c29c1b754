package agent

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

const forwardMagic = "contrast-forward/1"

// ForwardHeader is the line the host writes first on a connection to
// ForwardPort: connect to this TCP port on the pod's loopback. The agent
// answers with one reply line (WriteForwardReply); after an "ok" the
// connection carries the TCP stream's bytes both ways, and each side closes
// its write half when its reader of the TCP connection reached EOF.
type ForwardHeader struct {
	Port uint16
}

// WriteTo writes the header line.
func (h ForwardHeader) WriteTo(w io.Writer) (int64, error) {
	if h.Port == 0 {
		return 0, errors.New("forward header: port 0")
	}
	n, err := fmt.Fprintf(w, "%s %d\n", forwardMagic, h.Port)
	return int64(n), err
}

// ReadForwardHeader reads the header line byte by byte, so nothing of the
// stream that follows is consumed.
func ReadForwardHeader(r io.Reader) (ForwardHeader, error) {
	line, err := readLine(r, "forward header")
	if err != nil {
		return ForwardHeader{}, err
	}
	return ParseForwardHeader(line)
}

// ParseForwardHeader parses a header line without its newline.
func ParseForwardHeader(line string) (ForwardHeader, error) {
	magic, port, ok := strings.Cut(line, " ")
	if !ok || magic != forwardMagic {
		return ForwardHeader{}, fmt.Errorf("malformed forward header %q: want %q <port>", line, forwardMagic)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != port {
		return ForwardHeader{}, fmt.Errorf("malformed forward header %q: port %q is not a number in 1..65535", line, port)
	}
	return ForwardHeader{Port: uint16(n)}, nil
}

// The agent's answer to a ForwardHeader: "ok", or "error <why>" after which
// it closes the connection.
const (
	forwardOK    = "ok"
	forwardError = "error "
)

// WriteForwardReply writes the agent's reply line: ok for a nil err, the
// error's text (on one line) otherwise.
func WriteForwardReply(w io.Writer, err error) error {
	line := forwardOK
	if err != nil {
		line = forwardError + strings.Join(strings.Fields(err.Error()), " ")
		if len(line) > maxHeaderLen {
			line = line[:maxHeaderLen]
		}
	}
	_, werr := io.WriteString(w, line+"\n")
	return werr
}

// ReadForwardReply reads the agent's reply line byte by byte, so nothing
// of the stream that follows is consumed. It returns nil for ok and the
// agent's reason otherwise.
func ReadForwardReply(r io.Reader) error {
	line, err := readLine(r, "forward reply")
	if err != nil {
		return err
	}
	if line == forwardOK {
		return nil
	}
	if why, ok := strings.CutPrefix(line, forwardError); ok {
		return errors.New(why)
	}
	return fmt.Errorf("malformed forward reply %q", line)
}

// readLine reads one line of at most maxHeaderLen bytes, byte by byte.
func readLine(r io.Reader, what string) (string, error) {
	var line []byte
	var b [1]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", fmt.Errorf("read %s: %w", what, err)
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
		if len(line) > maxHeaderLen {
			return "", fmt.Errorf("%s longer than %d bytes", what, maxHeaderLen)
		}
	}
}
