// Command vsocksource is the guest-side source of BenchmarkLogPath: it
// writes a number of bytes, in chunks of one size, either to its stdout
// (the container's log path: agent, vsock stream, shim, containerd) or to
// every connection accepted on an AF_VSOCK port (the same vsock transport
// with nothing of ours on it), so that the two figures differ only in the
// path. It runs in a test container, never in the guest image.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

func main() {
	size := flag.Int64("bytes", 32<<20, "bytes to write per stream")
	chunk := flag.Int("chunk", 64<<10, "bytes per write")
	port := flag.Uint("listen", 0, "serve the bytes to every connection on this vsock port instead of writing them to stdout")
	flag.Parse()
	if *chunk <= 0 || *size < 0 {
		log.Fatalf("vsocksource: -bytes must not be negative and -chunk must be positive")
	}
	if *port == 0 {
		if err := send(os.Stdout, *size, *chunk); err != nil {
			log.Fatalf("vsocksource: write stdout: %v", err)
		}
		return
	}
	// Any CID: vsock.Listen would ask /dev/vsock for ours, which a
	// container does not have.
	l, err := vsock.ListenContextID(unix.VMADDR_CID_ANY, uint32(*port), nil)
	if err != nil {
		log.Fatalf("vsocksource: listen on vsock port %d: %v", *port, err)
	}
	fmt.Printf("listening on vsock port %d\n", *port)
	for {
		conn, err := l.Accept()
		if err != nil {
			log.Fatalf("vsocksource: accept: %v", err)
		}
		go func(conn net.Conn) {
			defer conn.Close()
			if err := send(conn, *size, *chunk); err != nil {
				log.Printf("vsocksource: write to %s: %v", conn.RemoteAddr(), err)
			}
		}(conn)
	}
}

// send writes size bytes to w in writes of chunk bytes.
func send(w io.Writer, size int64, chunk int) error {
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = 'a' + byte(i%26)
		if i%64 == 63 {
			buf[i] = '\n' // lines, as a log has them
		}
	}
	for size > 0 {
		n := int(min(int64(chunk), size))
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		size -= int64(n)
	}
	return nil
}
