package attest

import (
	"errors"
	"fmt"

	"github.com/contrast-vm/contrast/vmimage"
)

// ImageReferences returns the reference measurements of a guest image (its
// reference.json, see vmimage.Reference): one per vCPU count the runtime
// may give a pod VM, since a report does not say how many vCPUs its VM
// has. Each is labelled "<source>, <n> vCPUs".
func ImageReferences(r *vmimage.Reference, source string) ([]Reference, error) {
	if len(r.Measurements) == 0 {
		return nil, errors.New("reference measurements: none listed")
	}
	refs := make([]Reference, 0, len(r.Measurements))
	for _, m := range r.Measurements {
		v, err := ParseMeasurement(m.Measurement)
		if err != nil {
			return nil, fmt.Errorf("reference measurements: %d vCPUs: %w", m.VCPUs, err)
		}
		refs = append(refs, Reference{Measurement: v, Label: fmt.Sprintf("%s, %d vCPUs", source, m.VCPUs)})
	}
	return refs, nil
}
