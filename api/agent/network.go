package agent

import (
	"errors"
	"fmt"
)

// maxLinkName is the longest network interface name Linux takes (IFNAMSIZ
// less the terminating NUL).
const maxLinkName = 15

// ValidateLinkName checks a network interface name as the kernel takes it
// (dev_valid_name), without '%', which would make the kernel pick a name
// from the pattern, and without control characters.
func ValidateLinkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > maxLinkName:
		return fmt.Errorf("%q is longer than %d bytes", name, maxLinkName)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a link name", name)
	}
	for _, c := range name {
		if c == '/' || c == ':' || c == '%' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("%q contains %q", name, c)
		}
	}
	return nil
}
