package lifecycle

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestMoves(t *testing.T) {
	legal := map[[2]State]bool{
		{Creating, Created}: true, {Creating, Deleted}: true,
		{Created, Running}: true, {Created, Stopped}: true, {Created, Deleting}: true, {Created, Deleted}: true,
		{Running, Paused}: true, {Running, Stopped}: true,
		{Paused, Running}: true, {Paused, Stopped}: true,
		{Stopped, Deleting}: true, {Stopped, Deleted}: true,
		{Deleting, Deleted}: true,
	}
	for from := Creating; from <= Deleted; from++ {
		for to := Creating; to <= Deleted+1; to++ {
			want := legal[[2]State{from, to}]
			err := Check("container c1", from, to)
			if (err == nil) != want {
				t.Errorf("%s -> %s: err %v, want legal=%v", from, to, err, want)
			}
			if err != nil {
				if !errors.Is(err, errdefs.ErrFailedPrecondition) {
					t.Errorf("%s -> %s: %v is no FailedPrecondition", from, to, err)
				}
				for _, s := range []string{"container c1", from.String(), to.String()} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("%s -> %s: %q does not name %q", from, to, err, s)
					}
				}
			}
		}
	}
	if Legal(Deleted+1, Created) {
		t.Error("an unknown state moves")
	}
}

func TestPredicates(t *testing.T) {
	for s := Creating; s <= Deleted; s++ {
		if got, want := s.Live(), s == Running || s == Paused; got != want {
			t.Errorf("%s.Live() = %v", s, got)
		}
		if got, want := s.Ended(), s == Stopped || s == Deleting || s == Deleted; got != want {
			t.Errorf("%s.Ended() = %v", s, got)
		}
	}
}

func TestCheckOp(t *testing.T) {
	for _, op := range []Op{Start, Pause, Resume} {
		if !Legal(op.From, op.To) {
			t.Errorf("%s -> %s is no edge of the table", op.From, op.To)
		}
		for from := Creating; from <= Deleted; from++ {
			err := CheckOp("container c1", from, op)
			if (err == nil) != (from == op.From) {
				t.Errorf("%s -> %s from %s: %v", op.From, op.To, from, err)
			}
			if err != nil && (!errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), from.String())) {
				t.Errorf("%s -> %s from %s: %v names no state or is no FailedPrecondition", op.From, op.To, from, err)
			}
		}
	}
}
