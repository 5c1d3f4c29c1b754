package attest

import (
	"fmt"

	"github.com/contrast-vm/contrast/vmimage"
)

// ImageReferences returns the reference measurements of a guest image (its
// reference.json, see vmimage.Reference) for the vCPU counts of vcpus, a
// range within the reference's: a report does not say how many vCPUs its VM
// has, and a pod's VM gets as many as its limits ask for, so each count is
// computed from what the reference says the launch measures. Each is
// labelled "<source>, <n> vCPUs".
func ImageReferences(r *vmimage.Reference, source string, vcpus vmimage.VCPURange) ([]Reference, error) {
	ms, err := r.Measurements(vcpus)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	refs := make([]Reference, 0, len(ms))
	for _, m := range ms {
		refs = append(refs, Reference{Measurement: m.Measurement, Label: fmt.Sprintf("%s, %d vCPUs", source, m.VCPUs)})
	}
	return refs, nil
}
