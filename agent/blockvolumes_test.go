package agent

import (
	"strings"
	"testing"

	api "github.com/contrast-vm/contrast/api/agent"
)

func TestCheckBlockVolumes(t *testing.T) {
	layer := &api.Layer{Serial: "l0123456789abcdef012"}
	for _, tc := range []struct {
		name    string
		req     *api.CreateContainerRequest
		wantErr string // "" accepts
	}{
		{name: "none", req: &api.CreateContainerRequest{}},
		{name: "two volumes", req: &api.CreateContainerRequest{Layers: []*api.Layer{layer}, BlockVolumes: []*api.BlockVolume{
			{Serial: "v1", ContainerPath: "/dev/xvda"}, {Serial: "v2", ContainerPath: "/dev/xvdb"},
		}}},
		{name: "empty entry", req: &api.CreateContainerRequest{BlockVolumes: []*api.BlockVolume{nil}}, wantErr: "block volume 0 is empty"},
		{name: "relative path", req: &api.CreateContainerRequest{BlockVolumes: []*api.BlockVolume{{Serial: "v1", ContainerPath: "dev/xvda"}}},
			wantErr: `container path "dev/xvda" is not a clean absolute path`},
		{name: "bad serial", req: &api.CreateContainerRequest{BlockVolumes: []*api.BlockVolume{{Serial: "v 1", ContainerPath: "/dev/xvda"}}},
			wantErr: "block volume for /dev/xvda: block device serial"},
		{name: "a layer's serial", req: &api.CreateContainerRequest{Layers: []*api.Layer{layer}, BlockVolumes: []*api.BlockVolume{{Serial: layer.Serial, ContainerPath: "/dev/xvda"}}},
			wantErr: "is image layer 0's"},
		{name: "the rootfs's serial", req: &api.CreateContainerRequest{Rootfs: &api.BlockDevice{Serial: "r1"}, BlockVolumes: []*api.BlockVolume{{Serial: "r1", ContainerPath: "/dev/xvda"}}},
			wantErr: "is the rootfs device's"},
		{name: "one serial twice", req: &api.CreateContainerRequest{BlockVolumes: []*api.BlockVolume{{Serial: "v1", ContainerPath: "/dev/xvda"}, {Serial: "v1", ContainerPath: "/dev/xvdb"}}},
			wantErr: "block volume for /dev/xvdb: serial \"v1\" is another block volume's too"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkBlockVolumes(tc.req)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
