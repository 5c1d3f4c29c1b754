package agent

import (
	"fmt"
	"strings"
)

// CheckSysctlName checks a kernel parameter's name as a pod may set it:
// dot-separated components of letters, digits, '_' and '-' (an interface
// name component may hold '/' written as '.' by the kubelet, which this
// does not allow: the kernel would read it as a separator).
func CheckSysctlName(name string) error {
	if name == "" || len(name) > 256 {
		return fmt.Errorf("sysctl name %q: empty or longer than 256 bytes", name)
	}
	for _, c := range strings.Split(name, ".") {
		if c == "" {
			return fmt.Errorf("sysctl name %q: an empty component", name)
		}
		for _, r := range c {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
				return fmt.Errorf("sysctl name %q: character %q is not allowed", name, r)
			}
		}
	}
	return nil
}
