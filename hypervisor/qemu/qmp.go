package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// QMPError is an error answer from QEMU's monitor, with QMP's error class
// (GenericError, DeviceNotFound, ...) and QEMU's description.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qmpEvent is an asynchronous QMP event.
type qmpEvent struct {
	Name      string
	Data      json.RawMessage
	Timestamp time.Time
}

// qmpMessage is any message QEMU sends: greeting, answer or event.
type qmpMessage struct {
	QMP       json.RawMessage `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *QMPError       `json:"error"`
	ID        json.RawMessage `json:"id"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// errQMPClosed is what pending and later commands get once the connection
// is gone (QEMU exited, or Close).
var errQMPClosed = errors.New("qmp connection closed")

// qmpClient speaks QMP over one connection: commands are matched to their
// answers by id, so several goroutines may execute at once, and events go
// to subscribers.
type qmpClient struct {
	conn net.Conn

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan qmpMessage
	subs    map[int]*qmpSub
	nextSub int
	err     error // why the reader stopped; set once
	closed  chan struct{}
}

type qmpSub struct {
	match func(qmpEvent) bool
	ch    chan qmpEvent
}

// newQMPClient reads the greeting, starts the reader and leaves
// capability negotiation mode. The context bounds the handshake only.
func newQMPClient(ctx context.Context, conn net.Conn) (*qmpClient, error) {
	rd := bufio.NewReader(conn)
	// The greeting is read before the reader goroutine exists; a deadline
	// bounds it because QEMU might never speak.
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetReadDeadline(dl); err != nil {
			return nil, fmt.Errorf("qmp: set deadline: %w", err)
		}
	}
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	line, err := rd.ReadBytes('\n')
	stop()
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The socket deadline is ctx's: let ctx catch up, to report
			// it rather than an i/o timeout.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("qmp: waiting for greeting: %w", ctx.Err())
		}
		return nil, fmt.Errorf("qmp: read greeting: %w", err)
	}
	var greet qmpMessage
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		return nil, fmt.Errorf("qmp: unexpected greeting %q", truncate(string(line), 200))
	}
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("qmp: clear deadline: %w", err)
	}
	c := &qmpClient{
		conn:    conn,
		pending: map[string]chan qmpMessage{},
		subs:    map[int]*qmpSub{},
		closed:  make(chan struct{}),
	}
	go c.readLoop(rd)
	if err := c.execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *qmpClient) readLoop(rd *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = rd.ReadBytes('\n')
		if err != nil {
			break
		}
		var m qmpMessage
		if jerr := json.Unmarshal(line, &m); jerr != nil {
			err = fmt.Errorf("qmp: undecodable message %q: %w", truncate(string(line), 200), jerr)
			break
		}
		if m.Event != "" {
			c.dispatch(qmpEvent{
				Name:      m.Event,
				Data:      m.Data,
				Timestamp: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000),
			})
			continue
		}
		c.mu.Lock()
		ch, ok := c.pending[string(m.ID)]
		delete(c.pending, string(m.ID))
		c.mu.Unlock()
		if ok {
			ch <- m // buffered, one answer per id
		}
		// An answer without a known id belongs to a command whose caller
		// gave up; nothing waits for it.
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("%w: %v", errQMPClosed, err)
	}
	c.pending = nil
	for _, s := range c.subs {
		close(s.ch)
	}
	c.subs = nil
	c.mu.Unlock()
	close(c.closed)
}

func (c *qmpClient) dispatch(ev qmpEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.subs {
		if s.match != nil && !s.match(ev) {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			// A subscriber that does not keep up loses events rather
			// than stalling every command answer behind it.
		}
	}
}

// subscribe delivers events for which match returns true (all if nil)
// until cancel is called or the connection closes (then the channel closes).
func (c *qmpClient) subscribe(match func(qmpEvent) bool) (<-chan qmpEvent, func()) {
	ch := make(chan qmpEvent, 64)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.subs == nil {
		close(ch)
		return ch, func() {}
	}
	id := c.nextSub
	c.nextSub++
	c.subs[id] = &qmpSub{match: match, ch: ch}
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if s, ok := c.subs[id]; ok {
			delete(c.subs, id)
			close(s.ch)
		}
	}
}

// execute runs a QMP command with optional arguments and decodes its
// return value into result (unless nil). A QEMU error comes back as
// *QMPError.
func (c *qmpClient) execute(ctx context.Context, command string, args any, result any) error {
	wait, err := c.send(ctx, command, args)
	if err != nil {
		return err
	}
	return wait(result)
}

// send sends a QMP command and returns the wait for its answer, which
// execute's result and errors then come from. QEMU runs commands in the
// order they arrive: commands sent one after another, before waiting,
// cost one round trip together.
func (c *qmpClient) send(ctx context.Context, command string, args any) (wait func(result any) error, _ error) {
	c.mu.Lock()
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	c.nextID++
	// QEMU echoes the id verbatim: its JSON text is the key.
	num := c.nextID
	id := strconv.FormatUint(num, 10)
	ch := make(chan qmpMessage, 1)
	c.pending[id] = ch
	c.mu.Unlock()

	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{command, args, num}
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("qmp %s: encode arguments: %w", command, err)
	}
	b = append(b, '\n')
	c.writeMu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
	} else {
		c.conn.SetWriteDeadline(time.Time{})
	}
	_, err = c.conn.Write(b)
	c.writeMu.Unlock()
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("qmp %s: send: %w", command, err)
	}

	return func(result any) error {
		select {
		case m := <-ch:
			if m.Error != nil {
				e := *m.Error
				e.Command = command
				return &e
			}
			if result != nil {
				if err := json.Unmarshal(m.Return, result); err != nil {
					return fmt.Errorf("qmp %s: decode answer %q: %w", command, truncate(string(m.Return), 200), err)
				}
			}
			return nil
		case <-c.closed:
			c.mu.Lock()
			err := c.err
			c.mu.Unlock()
			return fmt.Errorf("qmp %s: %w", command, err)
		case <-ctx.Done():
			c.forget(id)
			return fmt.Errorf("qmp %s: %w", command, ctx.Err())
		}
	}, nil
}

func (c *qmpClient) forget(id string) {
	c.mu.Lock()
	if c.pending != nil {
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// Done is closed when the connection is gone.
func (c *qmpClient) Done() <-chan struct{} { return c.closed }

// Close drops the connection; pending commands fail.
func (c *qmpClient) Close() error {
	c.mu.Lock()
	if c.err == nil {
		c.err = errQMPClosed
	}
	c.mu.Unlock()
	err := c.conn.Close()
	<-c.closed
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close qmp connection: %w", err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
