package stdio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/contrast-vm/contrast/api/agent"
)

var keyOut = Key{ContainerID: "c1", Stream: api.StreamStdout}

// serveUnix runs the hub on a unix socket and returns a dialer that sends a header.
func serveUnix(t *testing.T, h *Hub) func(hdr api.StdioHeader) *net.UnixConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "stdio.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- h.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return func(hdr api.StdioHeader) *net.UnixConn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := hdr.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
}

func hdr(k Key) api.StdioHeader {
	return api.StdioHeader{ContainerID: k.ContainerID, ExecID: k.ExecID, Stream: k.Stream}
}

func TestHubBeforeAndAfterClaim(t *testing.T) {
	h := NewHub()
	dial := serveUnix(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Connection first.
	c := dial(hdr(keyOut))
	if _, err := c.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	conn, err := h.Claim(ctx, keyOut)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "early" {
		t.Fatalf("read %q %v: header and stream mixed up", buf, err)
	}

	// Claim first.
	k := Key{ContainerID: "c1", ExecID: "e1", Stream: api.StreamStderr}
	got := make(chan net.Conn)
	go func() {
		conn, err := h.Claim(ctx, k)
		if err != nil {
			t.Error(err)
		}
		got <- conn
	}()
	time.Sleep(50 * time.Millisecond)
	dial(hdr(k))
	if <-got == nil {
		t.Fatal("no connection")
	}

	// Nobody comes.
	sctx, scancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer scancel()
	if _, err := h.Claim(sctx, Key{ContainerID: "c2", Stream: api.StreamStdin}); err == nil || !strings.Contains(err.Error(), "stdin of container c2") {
		t.Fatalf("claim without connection: %v", err)
	}
}

func TestHubRefuses(t *testing.T) {
	h := NewHub()
	h.Linger = 100 * time.Millisecond
	h.HeaderTimeout = 100 * time.Millisecond
	dial := serveUnix(t, h)

	first := dial(hdr(keyOut))
	second := dial(hdr(keyOut))
	assertClosed(t, second, "second connection for one stream")
	assertClosed(t, first, "unclaimed connection after Linger")
}

func TestHubHeaderTimeoutAndGarbage(t *testing.T) {
	h := NewHub()
	h.HeaderTimeout = 100 * time.Millisecond
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Serve(ctx, l)
	for _, send := range []string{"", "contrast-stdio/1 c1 - stdout", "GET / HTTP/1.1\r\n", "contrast-stdio/1 ../x - stdout\n", strings.Repeat("a", 600)} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(send))
		assertClosed(t, c, "connection sending "+send)
		c.Close()
	}
}

func assertClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: not closed by the agent (read %d, %v)", what, n, err)
	}
}

// A slow host slows the writer down; nothing is buffered without bound, and
// Drained fires only once the last byte is on the connection.
func TestOutputBackPressureAndDrain(t *testing.T) {
	h := NewHub()
	dial := serveUnix(t, h)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	o := h.StartOutput(context.Background(), keyOut, pr, 5*time.Second)
	host := dial(hdr(keyOut))
	host.SetReadBuffer(4096)

	const total = 8 << 20
	var written atomic.Int64
	go func() {
		chunk := bytes.Repeat([]byte("x"), 4096)
		for written.Load() < total {
			n, err := pw.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				t.Error(err)
				return
			}
		}
		// Like a process that exits while a child keeps the pipe open.
		o.ProcessExited()
	}()
	time.Sleep(300 * time.Millisecond)
	if w := written.Load(); w >= total/2 {
		t.Fatalf("%d bytes accepted while the host read nothing: no back-pressure", w)
	}
	select {
	case <-o.Drained():
		t.Fatal("drained before the host read")
	default:
	}
	// Read slowly-ish until Drained, then check nothing is missing.
	var got int64
	buf := make([]byte, 64<<10)
	for got < total {
		n, err := host.Read(buf)
		got += int64(n)
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
	}
	select {
	case <-o.Drained():
	case <-time.After(5 * time.Second):
		t.Fatal("not drained after the host read every byte")
	}
	select {
	case <-o.Done():
		t.Fatal("copier ended while the pipe is still open")
	default:
	}
	pw.Write([]byte("late"))
	pw.Close()
	rest, err := io.ReadAll(host)
	if err != nil || string(rest) != "late" {
		t.Fatalf("output after exit: %q %v", rest, err)
	}
	<-o.Done()
}

// Drained must wait for output that is still in the pipe at exit.
func TestOutputDrainWaitsForPipe(t *testing.T) {
	h := NewHub()
	dial := serveUnix(t, h)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	o := h.StartOutput(context.Background(), keyOut, pr, 5*time.Second)
	data := bytes.Repeat([]byte("y"), 60000) // fits the pipe: the writer is done before any copy
	if _, err := pw.Write(data); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	o.ProcessExited()
	time.Sleep(100 * time.Millisecond) // no connection yet: nothing can be drained
	select {
	case <-o.Drained():
		t.Fatal("drained before the connection arrived")
	default:
	}
	host := dial(hdr(keyOut))
	got, err := io.ReadAll(host)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
	<-o.Drained()
}

func TestOutputDiscardsWithoutConnection(t *testing.T) {
	h := NewHub()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	o := h.StartOutput(context.Background(), keyOut, pr, 50*time.Millisecond)
	if _, err := pw.Write(bytes.Repeat([]byte("z"), 1<<20)); err != nil {
		t.Fatalf("writer blocked forever: %v", err)
	}
	pw.Close()
	o.ProcessExited()
	<-o.Drained()
	<-o.Done()
}

func TestInput(t *testing.T) {
	h := NewHub()
	dial := serveUnix(t, h)
	kin := Key{ContainerID: "c1", Stream: api.StreamStdin}

	// Host sends and half-closes: the pipe gets everything and EOF.
	pr, pw, _ := os.Pipe()
	in := h.StartInput(context.Background(), kin, pw, 5*time.Second)
	c := dial(hdr(kin))
	c.Write([]byte("hello"))
	c.CloseWrite()
	got, err := io.ReadAll(pr)
	if err != nil || string(got) != "hello" {
		t.Fatalf("stdin %q %v", got, err)
	}
	in.Close(time.Second)

	// CloseStdin while the host keeps the connection open.
	pr, pw, _ = os.Pipe()
	in = h.StartInput(context.Background(), kin, pw, 5*time.Second)
	c = dial(hdr(kin))
	c.Write([]byte("abc"))
	start := time.Now()
	go in.Close(100 * time.Millisecond)
	got, err = io.ReadAll(pr)
	if err != nil || string(got) != "abc" || time.Since(start) > 3*time.Second {
		t.Fatalf("stdin %q %v after %v", got, err, time.Since(start))
	}

	// CloseStdin before the connection came.
	pr, pw, _ = os.Pipe()
	in = h.StartInput(context.Background(), kin, pw, 5*time.Second)
	in.Close(time.Second)
	if got, err := io.ReadAll(pr); err != nil || len(got) != 0 {
		t.Fatalf("stdin %q %v", got, err)
	}
}

// FuzzStdioConnection sends arbitrary bytes as a stdio connection: the hub
// either offers it under the key its header names, with the stream intact
// behind the header, or closes it.
func FuzzStdioConnection(f *testing.F) {
	f.Add([]byte("contrast-stdio/1 c1 - stdout\nrest of the stream"))
	f.Add([]byte("contrast-stdio/1 c1 e-1 stdin\n"))
	f.Add([]byte("contrast-stdio/1 c1 - stdout"))
	f.Add([]byte("contrast-stdio/1  - stdout\n"))
	f.Add([]byte("\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h := NewHub()
		h.HeaderTimeout = 200 * time.Millisecond
		agentSide, hostSide := net.Pipe()
		defer hostSide.Close()
		go func() {
			hostSide.Write(data)
			hostSide.Close()
		}()
		h.handle(context.Background(), agentSide)

		line, rest, hasLine := bytes.Cut(data, []byte("\n"))
		var want api.StdioHeader
		var perr error = errors.New("no newline")
		if hasLine && len(line) <= 512 {
			want, perr = api.ParseStdioHeader(string(line))
		}
		h.mu.Lock()
		n := len(h.pending)
		h.mu.Unlock()
		if perr != nil {
			if n != 0 {
				t.Fatalf("invalid header (%v) offered", perr)
			}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := h.Claim(ctx, Key{ContainerID: want.ContainerID, ExecID: want.ExecID, Stream: want.Stream})
		if err != nil {
			t.Fatalf("valid header %+v not offered: %v", want, err)
		}
		got, _ := io.ReadAll(conn)
		if !bytes.Equal(got, rest) {
			t.Fatalf("stream after header %q, want %q", got, rest)
		}
	})
}

// BenchmarkOutput measures the output path: process pipe, agent copy,
// stream connection (a unix socket here, vsock in the VM).
func BenchmarkOutput(b *testing.B) {
	h := NewHub()
	sock := filepath.Join(b.TempDir(), "stdio.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Serve(ctx, l)
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	b.SetBytes(int64(len(chunk)) * 64)
	for i := 0; i < b.N; i++ {
		pr, pw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		o := h.StartOutput(ctx, keyOut, pr, 5*time.Second)
		c, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := hdr(keyOut).WriteTo(c); err != nil {
			b.Fatal(err)
		}
		go func() {
			for j := 0; j < 64; j++ {
				pw.Write(chunk)
			}
			pw.Close()
			o.ProcessExited()
		}()
		n, err := io.Copy(io.Discard, c)
		if err != nil || n != int64(len(chunk))*64 {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		<-o.Done()
		c.Close()
	}
}
