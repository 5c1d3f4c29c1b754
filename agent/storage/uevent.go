package storage

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// uevents are the kernel's device announcements (NETLINK_KOBJECT_UEVENT),
// read only to wake a waiting scan: what they say is not trusted or
// parsed, /sys is read again instead.
type uevents struct {
	sock *os.File
	// wake receives once per batch of announcements read.
	wake chan struct{}
	done chan struct{}
}

// listenUevents subscribes to the kernel's uevents.
func listenUevents() (*uevents, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	// group 1: the kernel's own announcements (not udev's)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind uevent socket: %w", err)
	}
	// A non-blocking socket in an os.File is served by Go's poller: a
	// read waits without a thread, and close ends it.
	u := &uevents{sock: os.NewFile(uintptr(fd), "uevents"), wake: make(chan struct{}, 1), done: make(chan struct{})}
	go u.read()
	return u, nil
}

func (u *uevents) read() {
	defer close(u.done)
	buf := make([]byte, 8192)
	for {
		if _, err := u.sock.Read(buf); err != nil && !errors.Is(err, unix.ENOBUFS) {
			return // closed (ENOBUFS: announcements were dropped; rescan all the same)
		}
		select {
		case u.wake <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// next is the channel that receives when devices were announced; nil (never
// receives) for nil u.
func (u *uevents) next() <-chan struct{} {
	if u == nil {
		return nil
	}
	return u.wake
}

func (u *uevents) close() {
	u.sock.Close()
	<-u.done
}
