package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// progress shows the steps of long work: on a terminal one line per step,
// updated in place; otherwise (logs, CI) one line when a step ends.
type progress struct {
	w       io.Writer
	tty     bool
	current string
}

func newProgress(w io.Writer) *progress {
	return &progress{w: w, tty: isTerminal(w)}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (p *progress) report(step string, done, total int64) {
	starting := step != p.current
	p.current = step
	finished := !starting && done == total
	switch {
	case p.tty:
		fmt.Fprintf(p.w, "\r\033[K==> %-8s %s / %s", step, mib(done), mib(total))
		if finished {
			fmt.Fprintln(p.w)
		}
	case finished:
		fmt.Fprintf(p.w, "==> %-8s %s\n", step, mib(total))
	}
	if finished {
		p.current = ""
	}
}

func mib(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
