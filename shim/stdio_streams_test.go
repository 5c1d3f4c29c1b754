package shim

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/internal/pipes"
)

// barrierTransport answers a dial only once want dials wait at once (each
// stream's connection is a round trip into the guest: they must overlap),
// and fails the dial number failAt (1-based; 0: none).
type barrierTransport struct {
	want, failAt int

	mu     sync.Mutex
	dials  int
	all    chan struct{}
	closed int
}

type trackedConn struct {
	net.Conn
	tr *barrierTransport
}

func (c trackedConn) Close() error {
	c.tr.mu.Lock()
	c.tr.closed++
	c.tr.mu.Unlock()
	return c.Conn.Close()
}

func (b *barrierTransport) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	if port != agentapi.StdioPort {
		return nil, errors.New("not the stdio port")
	}
	b.mu.Lock()
	b.dials++
	n := b.dials
	if n == b.want {
		close(b.all)
	}
	b.mu.Unlock()
	select {
	case <-b.all:
	case <-time.After(10 * time.Second):
		return nil, errors.New("the other streams were never dialed while this one waited")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if n == b.failAt {
		return nil, errors.New("refused")
	}
	host, guest := net.Pipe()
	go func() { _, _ = io.Copy(io.Discard, guest) }()
	return trackedConn{host, b}, nil
}

func TestDialStreamsAtOnce(t *testing.T) {
	streams := []agentapi.Stream{agentapi.StreamStdout, agentapi.StreamStderr, agentapi.StreamStdin}
	tr := &barrierTransport{want: len(streams), all: make(chan struct{})}
	conns, err := dialStreams(context.Background(), tr, "c1", "e1", streams)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != len(streams) {
		t.Fatalf("%d connections for %d streams", len(conns), len(streams))
	}
	for _, s := range streams {
		if conns[s] == nil {
			t.Errorf("no connection for %s", s)
		}
		conns[s].Close()
	}
}

func TestDialStreamsFailureClosesTheOthers(t *testing.T) {
	streams := []agentapi.Stream{agentapi.StreamStdout, agentapi.StreamStderr, agentapi.StreamStdin}
	tr := &barrierTransport{want: len(streams), failAt: 2, all: make(chan struct{})}
	conns, err := dialStreams(context.Background(), tr, "c1", "e1", streams)
	if err == nil || conns != nil {
		t.Fatalf("dialStreams = %v, %v; want an error and no connections", conns, err)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.closed != len(streams)-1 {
		t.Errorf("%d of the %d connections that opened were closed", tr.closed, len(streams)-1)
	}
}

// An output FIFO the shim writes to holds outputFIFOSize bytes: the shim
// and containerd's reader take turns per megabyte, not per 64 KiB.
func TestOutputFIFOSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stdout")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	reader, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	var closers []func() error
	if _, _, err := openSinks(context.Background(), "k8s.io", "c1", stdioPaths{Stdout: path}, &closers); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	size, err := pipes.Size(reader)
	if err != nil {
		t.Fatal(err)
	}
	if size != outputFIFOSize {
		t.Errorf("the FIFO holds %d bytes, want %d", size, outputFIFOSize)
	}
}
