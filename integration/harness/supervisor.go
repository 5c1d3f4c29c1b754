package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// Supervisor stands in for the host's service manager: these machines
// have no systemd, so the node installer cannot `systemctl restart
// containerd`. The installer's --restart-cmd is instead
// `/bin/sh <host root>/<Dir>/restart-containerd`, a script that writes a
// request into a FIFO the supervisor reads, and waits for its answer on a
// second FIFO; the supervisor restarts containerd (SIGTERM, start with the
// same configuration, wait for CRI) and answers "ok" or the error. It
// works from inside a container that sees the host's root at some
// directory (the DaemonSet's /host), since the script finds the FIFOs next
// to itself.
type Supervisor struct {
	c *Containerd
	// Script is the restart command's script, as the host sees it.
	Script string
	req    string
	rep    string
	reqF   *os.File
	repF   *os.File

	mu       sync.Mutex
	restarts int
	done     chan struct{}
}

const restartScript = `#!/bin/sh
# Written by integration/harness: asks the harness, which supervises this
# containerd as systemd would on a node, to restart it, and waits until it
# serves again.
set -eu
d=$(dirname "$0")
echo restart >"$d/restart.req"
read -r reply <"$d/restart.rep"
[ "$reply" = ok ] || { echo "restart containerd: $reply" >&2; exit 1; }
`

// Supervise starts serving restart requests for c until Stop.
func (c *Containerd) Supervise() (*Supervisor, error) {
	s := &Supervisor{
		c:      c,
		Script: filepath.Join(c.Dir, "restart-containerd"),
		req:    filepath.Join(c.Dir, "restart.req"),
		rep:    filepath.Join(c.Dir, "restart.rep"),
		done:   make(chan struct{}),
	}
	for _, p := range []string{s.req, s.rep} {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			return nil, fmt.Errorf("supervisor: mkfifo %s: %w", p, err)
		}
	}
	if err := os.WriteFile(s.Script, []byte(restartScript), 0o755); err != nil {
		return nil, fmt.Errorf("supervisor: write %s: %w", s.Script, err)
	}
	// Both ends are held open read-write for the supervisor's life: opens
	// do not block, and an answer waits in the pipe for its reader.
	var err error
	if s.reqF, err = os.OpenFile(s.req, os.O_RDWR, 0); err != nil {
		return nil, fmt.Errorf("supervisor: open %s: %w", s.req, err)
	}
	if s.repF, err = os.OpenFile(s.rep, os.O_RDWR, 0); err != nil {
		s.reqF.Close()
		return nil, fmt.Errorf("supervisor: open %s: %w", s.rep, err)
	}
	go s.serve()
	return s, nil
}

func (s *Supervisor) serve() {
	defer close(s.done)
	r := bufio.NewReader(s.reqF)
	for {
		line, err := r.ReadString('\n')
		if err != nil || line == "stop\n" {
			return
		}
		reply := "ok"
		if err := s.c.Restart(context.Background()); err != nil {
			reply = fmt.Sprintf("%v", err)
		}
		s.mu.Lock()
		s.restarts++
		s.mu.Unlock()
		if _, err := fmt.Fprintf(s.repF, "%s\n", firstLine(reply)); err != nil {
			return
		}
	}
}

// Restarts is how many restarts the supervisor carried out.
func (s *Supervisor) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

// Stop ends serving and removes the FIFOs and the script.
func (s *Supervisor) Stop() error {
	if _, err := s.reqF.WriteString("stop\n"); err == nil {
		<-s.done
	}
	var errs []error
	for _, f := range []*os.File{s.reqF, s.repF} {
		if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, p := range []string{s.req, s.rep, s.Script} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}
