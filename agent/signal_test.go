package agent

import (
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRuncProcessGone: the runc kill failures that mean the container's
// processes are gone already (a signal to them is then done, NotFound), and
// some that do not.
func TestRuncProcessGone(t *testing.T) {
	for _, c := range []struct {
		err  error
		gone bool
	}{
		{errors.New("runc kill c1 9: exit status 1: container not running"), true},
		{errors.New(`runc kill c1 15: exit status 1: container "c1" does not exist`), true},
		{errors.New("runc kill c1 9: exit status 1: no such process"), true},
		{fmt.Errorf("kill: %w", unix.ESRCH), true},
		{errors.New("runc kill c1 9: exit status 1: permission denied"), false},
		{errors.New("runc kill c1 9: signal: killed"), false},
		{errors.New("runc kill c1 9: context deadline exceeded"), false},
	} {
		if got := runcProcessGone(c.err); got != c.gone {
			t.Errorf("%v: gone %v, want %v", c.err, got, c.gone)
		}
	}
}
