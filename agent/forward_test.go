package agent

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
)

// forwardSocket is the port-forward socket serveOverUnix serves in its dir.
const forwardSocket = "forward.sock"

// echoServer listens on 127.0.0.1 and echoes each connection in upper
// case until the client's EOF, then closes; it returns the port.
func echoServer(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(bytes.ToUpper(b))
			}()
		}
	}()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// forwardClient serves an agent whose policy allows forwarding to ports,
// and returns a function that opens a forward connection to a port and
// returns the connection and the agent's reply.
func forwardClient(t *testing.T, ports ...int) func(port uint16) (net.Conn, error) {
	t.Helper()
	dir := t.TempDir()
	svc, err := NewService(hostTestConfig(dir, testBinary(t)))
	if err != nil {
		t.Fatal(err)
	}
	c, _, _ := serveOverUnix(t, svc, dir, nil)
	module, err := policy.Build(policy.Data{Version: policy.DataVersion, PortForward: policy.Forwarding{Ports: ports}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetPolicy(context.Background(), setPolicy(module)); err != nil {
		t.Fatal(err)
	}
	return func(port uint16) (net.Conn, error) {
		conn, err := net.Dial("unix", filepath.Join(dir, forwardSocket))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := (api.ForwardHeader{Port: port}).WriteTo(conn); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		err = api.ReadForwardReply(conn)
		conn.SetReadDeadline(time.Time{})
		return conn, err
	}
}

func TestForwardReachesAllowedPort(t *testing.T) {
	port := echoServer(t)
	open := forwardClient(t, int(port))
	conn, err := open(port)
	if err != nil {
		t.Fatalf("forward to the allowed port %d: %v", port, err)
	}
	// Half-close: the server answers after our EOF, so the agent must
	// carry the shutdown through and the answer back.
	if _, err := conn.Write([]byte("hello through the agent")); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "HELLO THROUGH THE AGENT" {
		t.Errorf("echo through the forward: %q, %v", got, err)
	}
}

func TestForwardRefusals(t *testing.T) {
	allowed := echoServer(t)
	other := echoServer(t)
	// A port the policy allows but where nothing listens.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	open := forwardClient(t, int(allowed), int(closedPort))

	_, err = open(other)
	if err == nil || !strings.Contains(err.Error(), "policy denies PortForward: rule port_forward.port") {
		t.Errorf("forward to a port the policy does not name: %v, want the policy's denial", err)
	}
	_, err = open(closedPort)
	if err == nil || !strings.Contains(err.Error(), "connect to port") {
		t.Errorf("forward to a port nothing listens on: %v, want the connect error", err)
	}
}

func TestForwardWithoutPolicy(t *testing.T) {
	dir := t.TempDir()
	svc, err := NewService(hostTestConfig(dir, testBinary(t)))
	if err != nil {
		t.Fatal(err)
	}
	serveOverUnix(t, svc, dir, nil)
	conn, err := net.Dial("unix", filepath.Join(dir, forwardSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	port := echoServer(t)
	(api.ForwardHeader{Port: port}).WriteTo(conn)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := api.ReadForwardReply(conn); err == nil || !strings.Contains(err.Error(), "no policy installed") {
		t.Errorf("forward before SetPolicy: %v, want a denial", err)
	}

	bad, err := net.Dial("unix", filepath.Join(dir, forwardSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	bad.Write([]byte("GET / HTTP/1.1\n"))
	bad.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := api.ReadForwardReply(bad); err == nil || !strings.Contains(err.Error(), "malformed forward header") {
		t.Errorf("malformed header: %v, want it named", err)
	}
	if n, err := bad.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("after a refusal the connection stays open: %d, %v", n, err)
	}
}
