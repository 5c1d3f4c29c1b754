package vsock

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeHybrid serves one connection on a unix socket with handler.
func fakeHybrid(t *testing.T, handler func(c net.Conn)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		handler(c)
	}()
	return path
}

func TestHybridTransport(t *testing.T) {
	t.Run("ok, stream starts right after the newline", func(t *testing.T) {
		path := fakeHybrid(t, func(c net.Conn) {
			port, err := readConnect(c)
			if err != nil || port != 42 {
				t.Errorf("server read %d, %v", port, err)
				return
			}
			// Reply and first stream bytes in one write: the client must not swallow them.
			c.Write([]byte("OK 1073741824\nstream data"))
			io.Copy(io.Discard, c)
		})
		c, err := HybridTransport{Path: path}.Dial(context.Background(), 42)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := make([]byte, len("stream data"))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "stream data" {
			t.Fatalf("first stream bytes %q, %v", got, err)
		}
	})

	for _, tc := range []struct {
		name, reply, want string
	}{
		{"refused", "", "connection closed before OK"},
		{"garbage", "NOPE\n", `"NOPE"`},
		{"bad port", "OK x\n", "bad port"},
		{"endless line", strings.Repeat("O", 100), "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := fakeHybrid(t, func(c net.Conn) {
				readConnect(c)
				c.Write([]byte(tc.reply))
			})
			_, err := HybridTransport{Path: path}.Dial(context.Background(), 42)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "port 42") {
				t.Fatalf("error %v, want one naming port 42 and containing %q", err, tc.want)
			}
		})
	}

	t.Run("no socket", func(t *testing.T) {
		_, err := HybridTransport{Path: "/nonexistent/hy.sock"}.Dial(context.Background(), 1)
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/hy.sock") {
			t.Fatalf("error %v, want one naming the path", err)
		}
	})

	// A server that never answers: the deadline and cancellation end the wait.
	silent := func(c net.Conn) { io.Copy(io.Discard, c) }
	t.Run("deadline", func(t *testing.T) {
		path := fakeHybrid(t, silent)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := HybridTransport{Path: path}.Dial(ctx, 42)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v, want deadline exceeded", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("took %v", d)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		path := fakeHybrid(t, silent)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err := HybridTransport{Path: path}.Dial(ctx, 42)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want canceled", err)
		}
	})
}

func TestReadConnect(t *testing.T) {
	for in, want := range map[string]uint32{"CONNECT 0\n": 0, "CONNECT 1024\n": 1024, "CONNECT 4294967294\n": 4294967294} {
		if got, err := readConnect(strings.NewReader(in)); err != nil || got != want {
			t.Errorf("readConnect(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "CONNECT 1", "CONNECT\n", "CONNECT -1\n", "CONNECT 4294967295\n", "connect 1\n", "CONNECT 1 2\n"} {
		if got, err := readConnect(strings.NewReader(in)); err == nil {
			t.Errorf("readConnect(%q) = %d, want an error", in, got)
		}
	}
}

func TestKernelTransport(t *testing.T) {
	// No VM has CID 3 on this host: the kernel says so at once.
	_, err := KernelTransport{CID: 3}.Dial(context.Background(), 1024)
	if err == nil || !strings.Contains(err.Error(), "cid 3 port 1024") {
		t.Fatalf("dial to a missing VM: %v, want an error naming cid 3 port 1024", err)
	}

	// CID 1 (local) has no loopback transport here, so the connect waits for
	// the kernel's 2 s timeout unless the context ends it first.
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	c, err := KernelTransport{CID: 1}.Dial(ctx, 1024)
	elapsed := time.Since(start)
	if err == nil {
		c.Close()
		t.Fatal("dial to CID 1 succeeded")
	}
	if elapsed > time.Second {
		t.Fatalf("dial took %v, the context allowed 150ms", elapsed)
	}
	if elapsed >= 150*time.Millisecond && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial ended by the deadline with %v, want deadline exceeded", err)
	}
}
