package agent

import (
	"strings"
	"testing"
)

func TestValidateLinkName(t *testing.T) {
	for _, ok := range []string{"eth0", "tap0_contrast", "a", "fifteen-bytes-x", "veth.1-2"} {
		if err := ValidateLinkName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for name, want := range map[string]string{
		"":                 "empty",
		"sixteen-bytes-xx": "longer than 15 bytes",
		".":                "not a link name",
		"..":               "not a link name",
		"eth/0":            `'/'`,
		"eth:0":            `':'`,
		"eth%d":            `'%'`,
		"eth 0":            `' '`,
		"eth\n0":           `'\n'`,
		"eth\x7f":          `'\x7f'`,
	} {
		err := ValidateLinkName(name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one saying %s", name, err, want)
		}
	}
}
