package pipes

import (
	"os"
	"testing"
)

func TestGrow(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	before, err := Size(r)
	if err != nil {
		t.Fatal(err)
	}
	want := 4 * before
	if err := Grow(w, want); err != nil {
		t.Fatal(err)
	}
	// either end sees the new size
	if got, err := Size(r); err != nil || got != want {
		t.Errorf("after Grow(%d): size %d, %v", want, got, err)
	}
	if err := Grow(w, -1); err == nil {
		t.Error("Grow to -1 bytes succeeded")
	}
}
