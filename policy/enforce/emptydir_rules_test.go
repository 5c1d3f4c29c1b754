package enforce

import (
	"testing"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
)

// TestCreateContainerMemoryVolumes: the medium of an emptyDir is the
// policy's; the host names exactly the Memory ones.
func TestCreateContainerMemoryVolumes(t *testing.T) {
	onDisk := testData()
	inMemory := testData()
	web := inMemory.Containers["web"]
	m := web.Mounts["/var/cache/nginx"]
	m.Memory = true
	web.Mounts["/var/cache/nginx"] = m
	inMemory.Containers["web"] = web

	named := []*agentapi.MemoryVolume{{Name: "cache", SizeBytes: 64 << 20}}
	for _, tc := range []struct {
		name     string
		data     policy.Data
		memory   []*agentapi.MemoryVolume
		wantRule string
	}{
		{"disk volume on disk", onDisk, nil, ""},
		{"disk volume in memory", onDisk, named, "create_container.memory_volumes"},
		{"Memory volume in memory", inMemory, named, ""},
		{"Memory volume on disk", inMemory, nil, "create_container.memory_volumes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := createRequest(t, "c-1", criSpec(testContainerNamed(t, "web")), &agentapi.Stdio{Stdout: true, Stderr: true})
			req.MemoryVolumes = tc.memory
			checkDecision(t, decide(t, engineFor(t, tc.data), policy.CreateContainer, req), tc.wantRule, `"cache"`)
		})
	}
}
