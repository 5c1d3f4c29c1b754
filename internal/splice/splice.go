// Package splice joins two stream connections, the shape of a forwarded
// TCP connection on both sides of the VM boundary.
package splice

import (
	"io"
	"net"
)

// Splice copies a to b and b to a until both directions end. A direction
// whose reader reaches EOF closes the other side's write half, so each end
// sees the other's shutdown and may still answer; an error (a reset) in
// either direction closes both connections.
func Splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	one := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
			src.Close()
		}
		done <- struct{}{}
	}
	go one(a, b)
	go one(b, a)
	<-done
	<-done
}
