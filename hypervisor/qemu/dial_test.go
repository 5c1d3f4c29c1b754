package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDialGuestErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := DialGuest(ctx, dir, 1024); err == nil || !strings.Contains(err.Error(), "no VM in "+dir) {
		t.Errorf("empty state dir: %v", err)
	}
	for _, bad := range []string{"", "two", "2", "-5", "99999999999"} {
		if err := os.WriteFile(filepath.Join(dir, guestCIDName), []byte(bad+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := DialGuest(ctx, dir, 1024); err == nil || !strings.Contains(err.Error(), "is not a guest CID") {
			t.Errorf("CID file %q: %v", bad, err)
		}
	}
}

// TestDialGuestHybrid reaches a stand-in for the vhost-user backend's hybrid
// socket, which takes precedence over a recorded CID, through the state
// dir's link to the socket dir: the state dir is longer than a socket path
// may be.
func TestDialGuestHybrid(t *testing.T) {
	root, err := os.MkdirTemp("", "qd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	dir := filepath.Join(root, strings.Repeat("long-state-dir/", 10))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sockDir, err := makeSocketDir(dir, filepath.Join(root, "s"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, guestCIDName), []byte("1234\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(sockDir, hybridSocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		var port uint32
		if _, err := fmt.Sscanf(line, "CONNECT %d\n", &port); err == nil {
			fmt.Fprintf(c, "OK %d\n", port)
			c.Write([]byte("agent"))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := DialGuest(ctx, dir, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 5)
	if _, err := conn.Read(buf); err != nil || string(buf) != "agent" {
		t.Errorf("read %q, %v", buf, err)
	}
	l.Close()
	removeRuntimeFiles(dir)
	for _, p := range []string{sockDir, filepath.Join(dir, socketsLinkName), filepath.Join(dir, guestCIDName)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after removeRuntimeFiles (%v)", p, err)
		}
	}
}
