//go:build linux

// Command guestinit is /init of the throwaway initramfs the vsock end-to-end
// test boots. It serves an AF_VSOCK echo on port 1234 and connects once to
// host port 5000, says hello and echoes what the host sends back. As PID 1
// it must never return.
package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

const (
	echoPort  = 1234
	helloPort = 5000
)

func main() {
	fmt.Println("guestinit: started")
	go greetHost()
	if err := serve(); err != nil {
		fmt.Fprintln(os.Stderr, "guestinit:", err)
	}
	select {}
}

func serve() error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: echoPort}); err != nil {
		return fmt.Errorf("bind vsock port %d: %w", echoPort, err)
	}
	if err := unix.Listen(fd, 64); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Printf("guestinit: echo listening on vsock port %d\n", echoPort)
	for {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err != nil {
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		go echo(nfd)
	}
}

// echo copies back what it reads until EOF, then half-closes and closes.
func echo(fd int) {
	defer unix.Close(fd)
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if n <= 0 {
			break
		}
		for p := buf[:n]; len(p) > 0; {
			w, err := unix.Write(fd, p)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			p = p[w:]
		}
	}
	_ = unix.Shutdown(fd, unix.SHUT_WR)
}

// greetHost connects to the host, retrying while the device comes up.
func greetHost() {
	for attempt := 0; attempt < 100; attempt++ {
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "guestinit: vsock socket:", err)
			return
		}
		if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: helloPort}); err != nil {
			unix.Close(fd)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if _, err := unix.Write(fd, []byte("hello from the guest\n")); err != nil {
			fmt.Fprintln(os.Stderr, "guestinit: write hello:", err)
			unix.Close(fd)
			return
		}
		echo(fd)
		fmt.Println("guestinit: greeted the host")
		return
	}
	fmt.Fprintln(os.Stderr, "guestinit: could not connect to the host")
}
