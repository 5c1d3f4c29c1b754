package stdio

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// drainPoll is how long a read waits, once the process has exited, before
// the copier looks whether the pipe is empty.
const drainPoll = 10 * time.Millisecond

// OutputPipeSize is the capacity the agent gives a process's stdout and
// stderr pipes, and OutputChunk the most the copier moves per read and
// write. Under TCG every guest context switch and syscall is dear, so the
// output crosses in few large writes: a 64 KiB pipe would switch between
// writer and copier every 64 KiB (every line, for a writer that flushes
// lines). The bound still holds: a host that reads slowly fills the pipe,
// and the process then blocks in write.
const (
	OutputPipeSize = 1 << 20
	OutputChunk    = 256 << 10
)

// Output copies a process's stdout or stderr pipe to the host connection for
// its key, through one fixed buffer: when the host reads slowly the pipe
// fills and the process blocks in write, nothing piles up in the agent.
type Output struct {
	key      Key
	r        *os.File
	exitOnce sync.Once
	exited   chan struct{}
	drained  chan struct{}
	drainOne sync.Once
	done     chan struct{}

	// discard: the policy allows the host no logs of the process; its
	// stream is claimed (so the host sees it end) but gets nothing.
	discard bool

	mu    sync.Mutex
	conn  net.Conn
	abort bool
}

// StartOutput starts copying r (the agent's end of the pipe) to the
// connection for key, which may arrive within claimTimeout. If it does not,
// or the host stops reading, the output is discarded (and logged) so that
// the process never blocks forever. Output owns r.
func (h *Hub) StartOutput(ctx context.Context, key Key, r *os.File, claimTimeout time.Duration) *Output {
	o := &Output{key: key, r: r, exited: make(chan struct{}), drained: make(chan struct{}), done: make(chan struct{})}
	go o.run(ctx, h, claimTimeout)
	return o
}

// StartDiscardedOutput is StartOutput for a process whose output the host
// may not read: the stream is drained into nothing, and the host's
// connection, once claimed, only ends with it.
func (h *Hub) StartDiscardedOutput(ctx context.Context, key Key, r *os.File, claimTimeout time.Duration) *Output {
	o := &Output{key: key, r: r, discard: true, exited: make(chan struct{}), drained: make(chan struct{}), done: make(chan struct{})}
	go o.run(ctx, h, claimTimeout)
	return o
}

func (o *Output) run(ctx context.Context, h *Hub, claimTimeout time.Duration) {
	defer close(o.done)
	defer o.markDrained()
	defer o.r.Close()
	lg := log.G(ctx).WithField("stream", o.key.String())

	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	conn, err := h.Claim(cctx, o.key)
	cancel()
	var w io.Writer = io.Discard
	if err != nil {
		lg.WithError(err).Warn("stdio: output is discarded")
	} else {
		o.mu.Lock()
		o.conn = conn
		if o.abort {
			conn.Close()
		}
		o.mu.Unlock()
		defer closeConn(conn)
		w = conn
		if o.discard {
			w = io.Discard
		}
	}

	buf := make([]byte, OutputChunk)
	for {
		n, rerr := o.r.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				lg.WithError(err).Warn("stdio: host connection failed, rest of the output is discarded")
				w = io.Discard
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, os.ErrDeadlineExceeded):
			// Only set once the process has exited: whatever it wrote is
			// in the pipe or already sent.
			if empty, err := pipeEmpty(o.r); err != nil || empty {
				o.markDrained()
				_ = o.r.SetReadDeadline(time.Time{}) // orphans may still write; copy on until EOF
			} else {
				_ = o.r.SetReadDeadline(time.Now().Add(drainPoll))
			}
		default:
			// A terminal's master reads EIO once every slave fd is closed and
			// the last byte was read: its EOF.
			if !errors.Is(rerr, io.EOF) && !errors.Is(rerr, os.ErrClosed) && !errors.Is(rerr, unix.EIO) {
				lg.WithError(rerr).Warn("stdio: read output pipe")
			}
			return
		}
	}
}

// ProcessExited tells the copier that the process wrote its last byte.
func (o *Output) ProcessExited() {
	o.exitOnce.Do(func() {
		close(o.exited)
		_ = o.r.SetReadDeadline(time.Now().Add(drainPoll))
	})
}

// Drained is closed once, after ProcessExited, everything the process wrote
// has been written to the host connection (or discarded, see StartOutput),
// or when copying ended.
func (o *Output) Drained() <-chan struct{} { return o.drained }

// Done is closed when the copier has finished and closed the connection.
func (o *Output) Done() <-chan struct{} { return o.done }

// Abort stops copying now: the connection and pipe are closed.
func (o *Output) Abort() {
	o.mu.Lock()
	o.abort = true
	if o.conn != nil {
		o.conn.Close()
	}
	o.mu.Unlock()
	o.r.Close()
}

func (o *Output) markDrained() { o.drainOne.Do(func() { close(o.drained) }) }

// pipeEmpty reports whether no bytes wait in the pipe.
func pipeEmpty(f *os.File) (bool, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) /* FIONREAD */ }); err != nil {
		return false, err
	}
	return n == 0, ierr
}

// closeConn ends the stream after its last byte: a half-close first, so the
// host sees EOF even if a plain close would reset.
func closeConn(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	conn.Close()
}

// Sink is the agent's end of a process's stdin.
type Sink interface {
	io.Writer
	// Interrupt makes a Write in progress, and later ones, return.
	Interrupt()
	// Close ends the input for the process (EOF) and releases the sink.
	Close() error
}

// pipeSink is a stdin pipe: closing it is EOF.
type pipeSink struct{ *os.File }

func (p pipeSink) Interrupt() { p.File.Close() }

func (p pipeSink) Close() error {
	if err := p.File.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}

// Input copies the host's stdin connection into the process's stdin; EOF
// on the connection ends the input (see Sink.Close).
type Input struct {
	w         Sink
	cancel    context.CancelFunc
	closeOnce sync.Once
	done      chan struct{}

	mu     sync.Mutex
	conn   net.Conn
	forced bool
}

// StartInput starts copying the connection for key, which may arrive within
// claimTimeout, into w (the agent's end of the stdin pipe). Input owns w.
func (h *Hub) StartInput(ctx context.Context, key Key, w *os.File, claimTimeout time.Duration) *Input {
	return h.StartInputSink(ctx, key, pipeSink{w}, claimTimeout)
}

// StartInputSink is StartInput for any sink, such as a Terminal.
func (h *Hub) StartInputSink(ctx context.Context, key Key, w Sink, claimTimeout time.Duration) *Input {
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	i := &Input{w: w, cancel: cancel, done: make(chan struct{})}
	go i.run(cctx, h, key)
	return i
}

func (i *Input) run(ctx context.Context, h *Hub, key Key) {
	defer close(i.done)
	defer i.closePipe()
	conn, err := h.Claim(ctx, key)
	i.cancel()
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			log.G(ctx).WithError(err).Warn("stdio: stdin closed")
		}
		return
	}
	defer conn.Close()
	i.mu.Lock()
	i.conn = conn
	forced := i.forced
	i.mu.Unlock()
	if forced {
		return
	}
	if _, err := io.Copy(i.w, conn); err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, unix.EPIPE) &&
		!errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, unix.EIO) {
		log.G(ctx).WithError(err).WithField("stream", key.String()).Warn("stdio: copy stdin")
	}
}

func (i *Input) closePipe() {
	i.closeOnce.Do(func() {
		if err := i.w.Close(); err != nil {
			log.L.WithError(err).Debug("stdio: end of stdin")
		}
	})
}

// Close ends the process's stdin. Input the host already sent (on a
// connection that may still be on its way) is given up to grace to reach the
// process; the host closes its side after its last byte. Then the
// connection is cut.
func (i *Input) Close(grace time.Duration) {
	select {
	case <-i.done:
		return
	case <-time.After(grace):
	}
	i.cancel()
	i.mu.Lock()
	i.forced = true
	if i.conn != nil {
		i.conn.Close()
	}
	i.mu.Unlock()
	// A process that does not read its stdin must not hold the copier in
	// Write; run ends the input on its way out.
	i.w.Interrupt()
	<-i.done
}
