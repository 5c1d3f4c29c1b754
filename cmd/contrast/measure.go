package main

import (
	"context"
	"errors"
)

// measure is `contrast measure` (being written: issue 5).
func measure(ctx context.Context, sio *stdio, args []string) error {
	return errors.New("contrast measure: not built yet")
}
