// Package stdio carries process stdio between the agent and the host. The
// host opens one connection per stream (api/agent StdioPort) and names the
// stream in a header line; the Hub matches connections with the processes
// that claim them, whichever comes first.
package stdio

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/containerd/log"
	api "github.com/contrast-vm/contrast/api/agent"
)

// Key names one stream of one process.
type Key struct {
	ContainerID string
	ExecID      string // empty for the container's init process
	Stream      api.Stream
}

func (k Key) String() string {
	if k.ExecID == "" {
		return fmt.Sprintf("%s of container %s", k.Stream, k.ContainerID)
	}
	return fmt.Sprintf("%s of exec %s in container %s", k.Stream, k.ExecID, k.ContainerID)
}

// Hub pairs stdio connections with the processes that claim them.
type Hub struct {
	// HeaderTimeout bounds how long a new connection may take to send its header.
	HeaderTimeout time.Duration
	// Linger is how long a connection nobody claimed yet is kept.
	Linger time.Duration
	// MaxPending bounds the connections kept unclaimed.
	MaxPending int

	mu      sync.Mutex
	pending map[Key]net.Conn
	waiting map[Key]chan net.Conn
}

// NewHub returns a Hub with default limits.
func NewHub() *Hub {
	return &Hub{
		HeaderTimeout: 10 * time.Second,
		Linger:        time.Minute,
		MaxPending:    256,
		pending:       map[Key]net.Conn{},
		waiting:       map[Key]chan net.Conn{},
	}
}

// Serve accepts stdio connections on l until ctx ends or l fails; it closes l.
func (h *Hub) Serve(ctx context.Context, l net.Listener) error {
	return AcceptUntil(ctx, l, "stdio", func(conn net.Conn) { go h.handle(ctx, conn) })
}

// AcceptUntil hands each connection accepted on l to handle until ctx ends
// (then it returns nil) or l fails; it closes l. what names the
// connections in its error.
func AcceptUntil(ctx context.Context, l net.Listener, what string, handle func(net.Conn)) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept %s connection: %w", what, err)
		}
		handle(conn)
	}
}

// handle reads a connection's header and offers the connection. Whatever
// is wrong with it closes it: the host gets no other answer.
func (h *Hub) handle(ctx context.Context, conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(h.HeaderTimeout))
	hdr, err := api.ReadStdioHeader(conn)
	if err == nil {
		// Fails only on a connection that is closed already (net.Pipe
		// also when the peer closed after its header); its reader will
		// see that.
		_ = conn.SetReadDeadline(time.Time{})
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("remote", conn.RemoteAddr()).Warn("stdio connection refused")
		conn.Close()
		return
	}
	h.Offer(ctx, Key{ContainerID: hdr.ContainerID, ExecID: hdr.ExecID, Stream: hdr.Stream}, conn)
}

// Offer hands conn to whoever claims key, now or within Linger.
func (h *Hub) Offer(ctx context.Context, key Key, conn net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch, ok := h.waiting[key]; ok {
		delete(h.waiting, key)
		ch <- conn // buffered
		return
	}
	if _, dup := h.pending[key]; dup {
		log.G(ctx).Warnf("stdio: second connection for %s refused", key)
		conn.Close()
		return
	}
	if len(h.pending) >= h.MaxPending {
		log.G(ctx).Warnf("stdio: %d connections wait to be claimed; connection for %s refused", len(h.pending), key)
		conn.Close()
		return
	}
	h.pending[key] = conn
	time.AfterFunc(h.Linger, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.pending[key] == conn {
			delete(h.pending, key)
			log.G(ctx).Warnf("stdio: connection for %s not claimed within %v, closed", key, h.Linger)
			conn.Close()
		}
	})
}

// Claim returns the connection for key, waiting for it until ctx ends.
func (h *Hub) Claim(ctx context.Context, key Key) (net.Conn, error) {
	h.mu.Lock()
	if conn, ok := h.pending[key]; ok {
		delete(h.pending, key)
		h.mu.Unlock()
		return conn, nil
	}
	if _, dup := h.waiting[key]; dup {
		h.mu.Unlock()
		return nil, fmt.Errorf("stdio: %s is already claimed", key)
	}
	ch := make(chan net.Conn, 1)
	h.waiting[key] = ch
	h.mu.Unlock()

	select {
	case conn := <-ch:
		return conn, nil
	case <-ctx.Done():
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.waiting[key] == ch {
			delete(h.waiting, key)
			return nil, fmt.Errorf("no stdio connection for %s: %w", key, ctx.Err())
		}
		return <-ch, nil // offered while we gave up
	}
}
