package netconf

import (
	"testing"

	"google.golang.org/protobuf/proto"

	api "github.com/contrast-vm/contrast/api/agent"
)

// FuzzValidate feeds Validate what an untrusted host could send: any
// ConfigureNetworkRequest. It must never panic, and a request it accepts
// must describe itself (Summary) without panicking either.
func FuzzValidate(f *testing.F) {
	for _, req := range []*api.ConfigureNetworkRequest{
		{
			Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: "02:00:00:00:00:05", Mtu: 1450, Addresses: []string{"10.88.0.5/16", "fd00::5/64"}}},
			Routes: []*api.NetworkRoute{
				{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0"},
				{Destination: "169.254.1.1/32", Device: "eth0", LinkScope: true},
			},
			Neighbors: []*api.NetworkNeighbor{{Ip: "10.88.0.1", Mac: "02:00:00:00:00:01", Device: "eth0"}},
		},
		{Interfaces: []*api.NetworkInterface{{Name: "lo", Mac: "00:00:00:00:00:00"}}},
		{Routes: []*api.NetworkRoute{{Destination: "10.0.0.1/8", Source: "::1", Device: "x"}}},
	} {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req api.ConfigureNetworkRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			return
		}
		if Validate(&req) == nil {
			_ = Summary(&req)
		}
	})
}
