package splice

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestSpliceHalfClose: a client that closes its write half still gets the
// answer the far end sends after seeing that EOF.
func TestSpliceHalfClose(t *testing.T) {
	client, near := tcpPair(t)
	far, farServer := tcpPair(t)
	done := make(chan struct{})
	go func() { Splice(near, far); close(done) }()
	go func() {
		b, _ := io.ReadAll(farServer)
		farServer.Write(bytes.ToUpper(b))
		farServer.Close()
	}()
	client.Write([]byte("request"))
	client.(*net.TCPConn).CloseWrite()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "REQUEST" {
		t.Errorf("answer after half-close: %q, %v", got, err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("Splice did not return after both directions ended")
	}
}

// TestSpliceReset: a reset on one side ends both.
func TestSpliceReset(t *testing.T) {
	client, near := tcpPair(t)
	far, farServer := tcpPair(t)
	done := make(chan struct{})
	go func() { Splice(near, far); close(done) }()
	farServer.(*net.TCPConn).SetLinger(0)
	farServer.Close()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(client); err != nil {
		// a reset may reach the client as an error or as EOF
		t.Logf("client after reset: %v", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("Splice did not return after a reset")
	}
}
