package policy

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"strings"
)

// rules are the embedded rules every generated policy starts with.
//
//go:embed rules.rego
var rules []byte

// Rules returns the embedded rules (a copy), the part every generated
// policy shares.
func Rules() []byte { return append([]byte(nil), rules...) }

// Build returns the policy module for d: the embedded rules followed by
// `policy_data := <d as JSON>`. The same Data always gives the same bytes
// (struct fields in order, map keys sorted), so the policy hash is stable.
// Build refuses data the rules would misread: another schema version,
// patterns that do not compile, mount destinations that are not clean
// absolute paths.
func Build(d Data) ([]byte, error) {
	if err := checkData(d); err != nil {
		return nil, fmt.Errorf("policy data: %w", err)
	}
	var js bytes.Buffer
	enc := json.NewEncoder(&js)
	enc.SetEscapeHTML(false) // Keep <, > and & readable; Rego reads them either way.
	if err := enc.Encode(d); err != nil {
		return nil, fmt.Errorf("policy data: encode: %w", err)
	}
	var b bytes.Buffer
	b.Grow(len(rules) + js.Len() + 32)
	b.Write(rules)
	if !bytes.HasSuffix(rules, []byte("\n")) {
		b.WriteByte('\n')
	}
	b.WriteString(dataAssignment)
	b.Write(js.Bytes()) // Encode ends it with a newline.
	return b.Bytes(), nil
}

// dataAssignment starts the generated part of a module.
const dataAssignment = "\npolicy_data := "

// ParseData returns the Data of a module Build wrote: what a generated
// policy allows, for tools that show it. A hand-written module has none.
func ParseData(module []byte) (Data, error) {
	i := bytes.LastIndex(module, []byte(dataAssignment))
	if i < 0 {
		return Data{}, errors.New("the policy has no generated data (no policy_data := ...)")
	}
	var d Data
	dec := json.NewDecoder(bytes.NewReader(module[i+len(dataAssignment):]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return Data{}, fmt.Errorf("policy data: %w", err)
	}
	return d, nil
}

func checkData(d Data) error {
	if d.Version != DataVersion {
		return fmt.Errorf("version %d, the rules read version %d", d.Version, DataVersion)
	}
	if err := checkPattern("pod.hostname_pattern", d.Pod.HostnamePattern); err != nil {
		return err
	}
	for i, v := range d.Pod.Volumes {
		if err := checkPattern(fmt.Sprintf("pod.volumes[%d].name_pattern", i), v.NamePattern); err != nil {
			return err
		}
		if v.MaxBytes <= 0 {
			return fmt.Errorf("pod.volumes[%d].max_bytes: %d is not a size", i, v.MaxBytes)
		}
	}
	seen := map[string]bool{}
	for i, ic := range d.Pod.InitContainers {
		if _, ok := d.Containers[ic.Name]; !ok || seen[ic.Name] {
			return fmt.Errorf("pod.init_containers[%d]: %q is not a container of the policy, or named twice", i, ic.Name)
		}
		seen[ic.Name] = true
	}
	for name, c := range d.Containers {
		if name == "" {
			return fmt.Errorf("containers: a container without a name")
		}
		for e, ok := range c.Env {
			if !ok {
				return fmt.Errorf("containers[%q].env[%q]: false; env is a set, every entry true", name, e)
			}
			if k, _, found := strings.Cut(e, "="); !found || k == "" {
				return fmt.Errorf("containers[%q].env: %q is not NAME=VALUE", name, e)
			}
		}
		for i, p := range c.EnvPatterns {
			if err := checkPattern(fmt.Sprintf("containers[%q].env_patterns[%d]", name, i), p); err != nil {
				return err
			}
		}
		for dest, m := range c.Mounts {
			if !path.IsAbs(dest) || path.Clean(dest) != dest {
				return fmt.Errorf("containers[%q].mounts: destination %q is not a clean absolute path", name, dest)
			}
			if err := checkPattern(fmt.Sprintf("containers[%q].mounts[%q].source_pattern", name, dest), m.SourcePattern); err != nil {
				return err
			}
		}
		for _, capName := range c.Capabilities {
			if !strings.HasPrefix(capName, "CAP_") {
				return fmt.Errorf("containers[%q].capabilities: %q has no CAP_ prefix", name, capName)
			}
		}
		for i, args := range c.Exec {
			if len(args) == 0 {
				return fmt.Errorf("containers[%q].exec[%d]: empty command", name, i)
			}
		}
	}
	for k := range d.Requests {
		if !slices.Contains(Kinds, k) {
			return fmt.Errorf("requests: unknown request kind %q", k)
		}
	}
	return checkNetwork(d.Network)
}

// checkNetwork refuses network data the rules would misread: a pattern that
// does not compile, bounds that allow nothing by mistake, prefixes OPA's
// net.cidr_contains could not parse or would read otherwise than written.
func checkNetwork(n Network) error {
	if err := checkPattern("network.interface_pattern", n.InterfacePattern); err != nil {
		return err
	}
	if n.MaxInterfaces < 0 {
		return fmt.Errorf("network.max_interfaces: %d is negative", n.MaxInterfaces)
	}
	if n.MTUMin < 0 || n.MTUMin > n.MTUMax {
		return fmt.Errorf("network: mtu_min %d and mtu_max %d are no range", n.MTUMin, n.MTUMax)
	}
	if n.Allow && n.ForbiddenPrefixes == nil {
		return errors.New("network.forbidden_prefixes: missing while network.allow is set; list the prefixes the host may not configure (an empty list forbids none)")
	}
	for i, s := range n.ForbiddenPrefixes {
		if err := CheckPrefix(s); err != nil {
			return fmt.Errorf("network.forbidden_prefixes[%d]: %w", i, err)
		}
	}
	return nil
}

// CheckPrefix accepts a CIDR prefix in the form the rules compare against:
// no host bits set (OPA would drop them silently) and not IPv4-mapped IPv6
// (Go's net package, which OPA uses, reads those as IPv4).
func CheckPrefix(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("%q is not a CIDR prefix: %w", s, err)
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("%q is an IPv4-mapped IPv6 prefix; write the IPv4 prefix", s)
	}
	if m := p.Masked(); m != p {
		return fmt.Errorf("%q has host bits set; the prefix is %s", s, m)
	}
	return nil
}

// checkPattern compiles a pattern as the rules use it (anchored RE2; OPA's
// regex.match is Go's regexp).
func checkPattern(field, pattern string) error {
	if _, err := regexp.Compile("^(?:" + pattern + ")$"); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

// AllowAll returns a module that allows every request: for development
// only (the agent logs that it runs one). Its hash is stable like any other.
// The host may read everything, so it gets back what a container writes to
// the kubelet's termination-message file (a bind of
// <kubelet root>/pods/<uid>/containers/<name>/<id>), as with runc.
func AllowAll() []byte {
	return constantModule("allows every request (development only)", "true", map[Kind]string{
		CreateContainer: `{"allow": true, "write_back": sort([m.destination | some m in input.mounts; m.type == "bind"; regex.match("/pods/[^/]+/containers/[^/]+/[0-9a-f]+$", m.source)])}`,
	})
}

// DenyAll returns a module that denies every request.
func DenyAll() []byte {
	return constantModule("denies every request", `{"allow": false, "rule": "deny_all", "reason": "the pod's policy denies every request"}`, nil)
}

// constantModule decides every kind with value, or with its own value in
// byKind.
func constantModule(what, value string, byKind map[Kind]string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# A policy that %s.\npackage agent_policy\n\n", what)
	for _, k := range Kinds {
		v := value
		if own, ok := byKind[k]; ok {
			v = own
		}
		fmt.Fprintf(&b, "%s := %s\n", k, v)
	}
	return []byte(b.String())
}
