//go:build !contrast_simsnp

package tee

import "context"

// detectSimulated finds no simulated device: release builds have none.
func detectSimulated(context.Context) (TEE, error) { return nil, nil }
