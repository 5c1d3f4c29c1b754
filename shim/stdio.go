package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/fifo"
	"github.com/containerd/log"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/internal/pipes"
)

// hostIO bridges a process's stdio endpoints on the host (containerd's
// FIFOs, a file:// log or a binary:// logger) to its stdio vsock connections.
type hostIO struct {
	stdin    net.Conn      // nil without stdin
	stdinEOF chan struct{} // closed once everything written to the stdin FIFO was sent
	// stdinKeep is the shim's own write end of the stdin FIFO: the process
	// sees EOF on CloseIO, not when containerd restarts (its write end
	// goes then), as with containerd's runc shim.
	stdinKeep io.Closer
	output    sync.WaitGroup
	closers   []func() error
	closeMu   sync.Mutex
	inClosed  bool
}

// closeWriter is what net.Conn implementations offer for half-close.
type closeWriter interface{ CloseWrite() error }

// openHostIO opens the host endpoints and the guest connections for one
// process. Guest streams are dialed before the agent is asked to start the
// process: the agent waits for them, so no output is ever lost.
func openHostIO(ctx context.Context, tr hypervisor.Transport, namespace, containerID, execID string, paths stdioPaths) (_ *hostIO, retErr error) {
	h := &hostIO{stdinEOF: make(chan struct{})}
	if paths.Terminal {
		// a terminal has one output stream: stderr is merged into stdout
		paths.Stderr = ""
	}
	defer func() {
		if retErr != nil {
			h.close()
		}
	}()
	stdout, stderr, err := openSinks(ctx, namespace, containerID, paths, &h.closers)
	if err != nil {
		return nil, err
	}
	var streams []agentapi.Stream
	for _, out := range []struct {
		stream agentapi.Stream
		sink   io.Writer
	}{{agentapi.StreamStdout, stdout}, {agentapi.StreamStderr, stderr}} {
		if out.sink != nil {
			streams = append(streams, out.stream)
		}
	}
	if paths.Stdin != "" {
		streams = append(streams, agentapi.StreamStdin)
	}
	conns, err := dialStreams(ctx, tr, containerID, execID, streams)
	if err != nil {
		return nil, err
	}
	for _, conn := range conns {
		h.closers = append(h.closers, conn.Close)
	}
	for stream, sink := range map[agentapi.Stream]io.Writer{agentapi.StreamStdout: stdout, agentapi.StreamStderr: stderr} {
		conn := conns[stream]
		if conn == nil {
			continue
		}
		h.output.Add(1)
		go func() {
			defer h.output.Done()
			copyOutput(ctx, sink, conn, containerID, stream)
		}()
	}
	if paths.Stdin != "" {
		src, err := fifo.OpenFifo(ctx, paths.Stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %s: %w", paths.Stdin, err)
		}
		h.closers = append(h.closers, src.Close)
		keep, err := fifo.OpenFifo(ctx, paths.Stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %s for writing: %w", paths.Stdin, err)
		}
		h.stdinKeep = keep
		h.closers = append(h.closers, h.closeStdinKeep)
		conn := conns[agentapi.StreamStdin]
		h.stdin = conn
		go func() {
			if _, err := io.Copy(conn, src); err != nil && !errors.Is(err, net.ErrClosed) {
				log.G(ctx).WithError(err).WithField("container", containerID).Debug("stdin copy ended")
			}
			close(h.stdinEOF)
			h.closeStdin()
		}()
	}
	return h, nil
}

// outputChunk is the most copyOutput moves per read and write: large, so
// that a fast stream crosses the vsock back-end's lock and the sink in few
// steps (the back-end gives the guest 256 KiB of credit per connection).
const outputChunk = 256 << 10

// dialStreams opens one guest connection per stream, all at once: each is
// a round trip into the guest, and the process's start waits for them all.
// On failure none stays open.
func dialStreams(ctx context.Context, tr hypervisor.Transport, containerID, execID string, streams []agentapi.Stream) (map[agentapi.Stream]net.Conn, error) {
	type dialed struct {
		stream agentapi.Stream
		conn   net.Conn
		err    error
	}
	results := make(chan dialed, len(streams))
	for _, stream := range streams {
		go func() {
			conn, err := dialStream(ctx, tr, containerID, execID, stream)
			results <- dialed{stream, conn, err}
		}()
	}
	conns := make(map[agentapi.Stream]net.Conn, len(streams))
	var errs []error
	for range streams {
		r := <-results
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		conns[r.stream] = r.conn
	}
	if err := errors.Join(errs...); err != nil {
		for _, conn := range conns {
			conn.Close()
		}
		return nil, err
	}
	return conns, nil
}

// dialStream connects to the agent's stdio port and names the stream.
func dialStream(ctx context.Context, tr hypervisor.Transport, containerID, execID string, stream agentapi.Stream) (net.Conn, error) {
	conn, err := tr.Dial(ctx, agentapi.StdioPort)
	if err != nil {
		return nil, fmt.Errorf("connect %s of %s: %w", stream, containerID, err)
	}
	hdr := agentapi.StdioHeader{ContainerID: containerID, ExecID: execID, Stream: stream}
	if _, err := hdr.WriteTo(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send %s header of %s: %w", stream, containerID, err)
	}
	return conn, nil
}

// copyOutput copies one output stream to its sink. When the sink fails (no
// reader any more), the stream is still drained so the process never blocks.
func copyOutput(ctx context.Context, sink io.Writer, conn net.Conn, containerID string, stream agentapi.Stream) {
	if _, err := io.CopyBuffer(onlyWriter{sink}, conn, make([]byte, outputChunk)); err != nil {
		log.G(ctx).WithError(err).WithFields(log.Fields{"container": containerID, "stream": stream}).Warn("output copy failed; discarding the rest")
		_, _ = io.Copy(io.Discard, conn)
	}
	conn.Close()
}

// stdinDrainTimeout bounds how long CloseIO waits for what a client wrote
// to the stdin FIFO before it closed it.
const stdinDrainTimeout = 5 * time.Second

// closeStdinAfterDrain closes stdin once the bytes still in flight from the
// FIFO are sent: containerd closes its end of the FIFO, then calls CloseIO.
func (h *hostIO) closeStdinAfterDrain() {
	if h.stdin == nil {
		return
	}
	// With the shim's own write end gone too, the copy reads EOF once
	// the FIFO is drained.
	_ = h.closeStdinKeep()
	select {
	case <-h.stdinEOF:
	case <-time.After(stdinDrainTimeout):
	}
	h.closeStdin()
}

// closeStdinKeep closes the shim's write end of the stdin FIFO, once.
func (h *hostIO) closeStdinKeep() error {
	h.closeMu.Lock()
	defer h.closeMu.Unlock()
	if h.stdinKeep == nil {
		return nil
	}
	err := h.stdinKeep.Close()
	h.stdinKeep = nil
	return err
}

// closeStdin half-closes the stdin connection: the agent closes the
// process's stdin when it reads EOF.
func (h *hostIO) closeStdin() {
	h.closeMu.Lock()
	defer h.closeMu.Unlock()
	if h.stdin == nil || h.inClosed {
		return
	}
	h.inClosed = true
	if cw, ok := h.stdin.(closeWriter); ok {
		_ = cw.CloseWrite()
	} else {
		_ = h.stdin.Close()
	}
}

// waitOutput waits until all output has reached the host endpoints.
func (h *hostIO) waitOutput(ctx context.Context) error {
	done := make(chan struct{})
	go func() { h.output.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close releases every host endpoint and connection, once: the exit
// watcher and Delete may both call it.
func (h *hostIO) close() {
	h.closeMu.Lock()
	closers := h.closers
	h.closers = nil
	h.closeMu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		_ = closers[i]()
	}
}

// openSinks opens the host side of stdout and stderr: FIFOs (CRI and ctr),
// file:// (both streams appended to one file) or binary:// (a logging program
// reading the streams on fds 3 and 4, as containerd's shims do it).
func openSinks(ctx context.Context, namespace, id string, paths stdioPaths, closers *[]func() error) (stdout, stderr io.Writer, err error) {
	uri := paths.Stdout
	if uri == "" {
		uri = paths.Stderr
	}
	u, perr := url.Parse(uri)
	if uri == "" || perr != nil || u.Scheme == "" || u.Scheme == "fifo" {
		open := func(path string) (io.Writer, error) {
			if path == "" {
				return nil, nil
			}
			f, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
			if err != nil {
				return nil, fmt.Errorf("open output %s: %w", path, err)
			}
			*closers = append(*closers, f.Close)
			// A read side of our own keeps the FIFO open while containerd
			// restarts: a write then waits in the pipe (and, once it is
			// full, holds the process back) instead of failing with EPIPE
			// and losing the rest of the stream. The restarted containerd
			// opens the FIFO again and reads on. containerd's runc shim
			// does the same.
			// (A non-blocking open of a FIFO's read side returns at once;
			// fifo.OpenFifo would open it later, in the background.)
			keep, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				return nil, fmt.Errorf("open output %s for reading: %w", path, err)
			}
			*closers = append(*closers, keep.Close)
			if err := pipes.Grow(keep, outputFIFOSize); err != nil {
				log.G(ctx).WithError(err).Debug("output FIFO keeps its size")
			}
			return f, nil
		}
		if stdout, err = open(paths.Stdout); err != nil {
			return nil, nil, err
		}
		if stderr, err = open(paths.Stderr); err != nil {
			return nil, nil, err
		}
		return stdout, stderr, nil
	}
	switch u.Scheme {
	case "file":
		if u.Path == "" {
			return nil, nil, fmt.Errorf("log uri %q names no file", uri)
		}
		f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("open log file %s: %w", u.Path, err)
		}
		*closers = append(*closers, f.Close)
		return lockedWriter(f), lockedWriter(f), nil
	case "binary":
		return startLogBinary(ctx, namespace, id, u, closers)
	}
	return nil, nil, fmt.Errorf("log uri %q: unsupported scheme %q (want fifo path, file:// or binary://)", uri, u.Scheme)
}

// outputFIFOSize is the capacity the shim asks for an output FIFO: room
// for a few of copyOutput's chunks, so that the shim and containerd's
// reader take turns less often. The kernel bounds it (fs.pipe-max-size).
const outputFIFOSize = 1 << 20

// onlyWriter hides a sink's ReadFrom, so that io.CopyBuffer uses the
// buffer it is given (the pipe of a binary:// logger is an *os.File, whose
// ReadFrom falls back to copies of 32 KiB from a vsock connection).
type onlyWriter struct{ io.Writer }

// lockedWriter serializes writes of two streams into one file.
func lockedWriter(w io.Writer) io.Writer { return &syncWriter{w: w} }

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

// startLogBinary starts a binary:// logging program: stdout on fd 3, stderr
// on fd 4, and fd 5 it closes once it is ready to read.
func startLogBinary(ctx context.Context, namespace, id string, u *url.URL, closers *[]func() error) (io.Writer, io.Writer, error) {
	if u.Path == "" {
		return nil, nil, fmt.Errorf("log uri %q names no program", u.String())
	}
	var args []string
	q := u.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, k)
		if v := q.Get(k); v != "" {
			args = append(args, v)
		}
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		for _, f := range []*os.File{outR, outW, errR, errW} {
			f.Close()
		}
		return nil, nil, err
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = append(os.Environ(), "CONTAINER_ID="+id, "CONTAINER_NAMESPACE="+namespace)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	startErr := cmd.Start()
	outR.Close()
	errR.Close()
	readyW.Close()
	if startErr != nil {
		outW.Close()
		errW.Close()
		readyR.Close()
		return nil, nil, fmt.Errorf("start log program %s: %w", u.Path, startErr)
	}
	// The program signals readiness by closing fd 5.
	_ = readyR.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, rerr := readyR.Read(make([]byte, 1))
	readyR.Close()
	if rerr != nil && !errors.Is(rerr, io.EOF) {
		outW.Close()
		errW.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, nil, fmt.Errorf("log program %s did not become ready: %w", u.Path, rerr)
	}
	*closers = append(*closers, func() error {
		outW.Close()
		errW.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			return <-done
		}
	})
	return outW, errW, nil
}
