package generate

import (
	"context"
	"slices"
	"strings"
	"testing"
)

func TestBlockDevices(t *testing.T) {
	res, _ := generate(t, podYAML(`volumes:
- {name: a, persistentVolumeClaim: {claimName: a}}
- {name: b, persistentVolumeClaim: {claimName: b}}
containers:
- name: c
  image: busybox
  volumeDevices:
  - {name: b, devicePath: /dev/xvdb}
  - {name: a, devicePath: /dev/xvda}
- {name: plain, image: busybox}
`), Options{})
	if got := onlyContainer(t, res, "c").BlockDevices; !slices.Equal(got, []string{"/dev/xvda", "/dev/xvdb"}) {
		t.Errorf("block devices %q, want [/dev/xvda /dev/xvdb]", got)
	}
	if got := onlyContainer(t, res, "plain").BlockDevices; got != nil {
		t.Errorf("a container without volumeDevices gets block devices %q", got)
	}

	for _, tc := range []struct {
		name, devices, wantErr string
	}{
		{"undeclared volume", "[{name: x, devicePath: /dev/xvda}]", `volumeDevice /dev/xvda names volume "x", which the pod does not declare`},
		{"relative path", "[{name: a, devicePath: dev/xvda}]", `devicePath "dev/xvda" is not a clean absolute path`},
		{"unclean path", "[{name: a, devicePath: /dev/../xvda}]", `devicePath "/dev/../xvda" is not a clean absolute path`},
		{"one path twice", "[{name: a, devicePath: /dev/xvda}, {name: a, devicePath: /dev/xvda}]", "two volumeDevices at /dev/xvda"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			yaml := podYAML("volumes: [{name: a, persistentVolumeClaim: {claimName: a}}]\ncontainers:\n- {name: c, image: busybox, volumeDevices: " + tc.devices + "}\n")
			_, err := Generate(context.Background(), []byte(yaml), Options{Images: testImages(), Layers: fakeLayers(), Warn: func(string) {}})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
