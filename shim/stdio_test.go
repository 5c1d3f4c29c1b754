package shim

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeAndClose writes to the sinks openSinks returned and closes them in
// the order the shim does.
func writeAndClose(t *testing.T, stdout, stderr io.Writer, closers []func() error) {
	t.Helper()
	for i := 1; i <= 3; i++ {
		if _, err := io.WriteString(stdout, "out-"+string(rune('0'+i))+"\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(stderr, "err-"+string(rune('0'+i))+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i](); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFileLogURI(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "c.log")
	var closers []func() error
	stdout, stderr, err := openSinks(context.Background(), "ns", "c1", stdioPaths{Stdout: "file://" + logPath, Stderr: "file://" + logPath}, &closers)
	if err != nil {
		t.Fatal(err)
	}
	writeAndClose(t, stdout, stderr, closers)
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(data); got != "out-1\nerr-1\nout-2\nerr-2\nout-3\nerr-3\n" {
		t.Fatalf("log file holds %q", got)
	}
}

func TestBinaryLogURI(t *testing.T) {
	dir := t.TempDir()
	// A logging program as containerd defines them: stdout on fd 3, stderr
	// on fd 4, ready once it closes fd 5; it learns the container from the env.
	logger := filepath.Join(dir, "logger.sh")
	script := "#!/bin/sh\n# $1=--dir $2=<output dir>\n" +
		"cat <&3 5>&- >\"$2/$CONTAINER_NAMESPACE-$CONTAINER_ID.stdout\" &\n" +
		"cat <&4 5>&- >\"$2/$CONTAINER_NAMESPACE-$CONTAINER_ID.stderr\" &\n" +
		"exec 5>&-\nwait\n"
	if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	uri := "binary://" + logger + "?--dir=" + dir
	var closers []func() error
	stdout, stderr, err := openSinks(context.Background(), "k8s.io", "c1", stdioPaths{Stdout: uri, Stderr: uri}, &closers)
	if err != nil {
		t.Fatal(err)
	}
	writeAndClose(t, stdout, stderr, closers)
	out, _ := os.ReadFile(filepath.Join(dir, "k8s.io-c1.stdout"))
	errOut, _ := os.ReadFile(filepath.Join(dir, "k8s.io-c1.stderr"))
	if string(out) != "out-1\nout-2\nout-3\n" || string(errOut) != "err-1\nerr-2\nerr-3\n" {
		t.Fatalf("logger got stdout %q, stderr %q", out, errOut)
	}
}

func TestLogURIErrors(t *testing.T) {
	cases := []struct{ uri, want string }{
		{"binary:///nonexistent/logger", "start log program /nonexistent/logger"},
		{"file:///nonexistent/dir/c.log", "open log file /nonexistent/dir/c.log"},
		{"ftp://host/x", `unsupported scheme "ftp"`},
	}
	for _, c := range cases {
		var closers []func() error
		_, _, err := openSinks(context.Background(), "ns", "c1", stdioPaths{Stdout: c.uri}, &closers)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.uri, err, c.want)
		}
		if len(closers) != 0 {
			t.Errorf("%s: %d things left open after the error", c.uri, len(closers))
		}
	}
}

// TestFIFOSurvivesReaderRestart: containerd restarting closes the read side
// of an output FIFO for a while; what the process writes meanwhile must wait
// for the new reader, not fail with EPIPE and lose the rest of the stream.
func TestFIFOSurvivesReaderRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stdout")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	openReader := func() *os.File {
		r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	read := func(r *os.File, want string) {
		t.Helper()
		r.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, len(want))
		if _, err := io.ReadFull(r, buf); err != nil || string(buf) != want {
			t.Fatalf("read %q, %v; want %q", buf, err, want)
		}
	}
	first := openReader()
	var closers []func() error
	stdout, _, err := openSinks(context.Background(), "k8s.io", "c1", stdioPaths{Stdout: path}, &closers)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	if _, err := io.WriteString(stdout, "before\n"); err != nil {
		t.Fatal(err)
	}
	read(first, "before\n")
	first.Close() // containerd goes away

	if _, err := io.WriteString(stdout, "while down\n"); err != nil {
		t.Fatalf("write while containerd is down: %v", err)
	}
	second := openReader() // the restarted containerd
	defer second.Close()
	read(second, "while down\n")
	if _, err := io.WriteString(stdout, "after\n"); err != nil {
		t.Fatal(err)
	}
	read(second, "after\n")
}
