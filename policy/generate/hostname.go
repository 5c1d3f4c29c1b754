package generate

import (
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Patterns for names the cluster picks.
const (
	// dnsLabel is a Kubernetes DNS-1123 label (a namespace, a pod name's
	// generated suffix).
	dnsLabel = `[a-z0-9](?:[-a-z0-9]*[a-z0-9])?`
	// nodeHostname is a node's hostname, which a host-network pod sees
	// (its sandbox may carry none: see sandboxHostname).
	nodeHostname = `[A-Za-z0-9](?:[-.A-Za-z0-9]*[A-Za-z0-9])?`
	// podUID is the pod's UID, part of the kubelet's paths.
	podUID = `[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
	// dnsDomain is a cluster domain (cluster.local).
	dnsDomain = `[a-z0-9](?:[-.a-z0-9]*[a-z0-9])?`
)

// Limits of the names the API server and kubelet generate.
const (
	maxHostname      = 63 // the kubelet truncates a pod's hostname to this
	maxGeneratedName = 58 // a generateName prefix is cut to this, then 5 random characters follow
)

// podNaming is how a workload's pods are named.
type podNaming struct {
	// exact is the pod's name when it is known; pattern is used otherwise.
	exact   string
	pattern string
}

func (n podNaming) regexp() string {
	if n.exact != "" {
		return regexp.QuoteMeta(n.exact)
	}
	return n.pattern
}

// podNames is how the pods of a workload are named: a Pod by its own name
// (or generateName), a StatefulSet's as <name>-<ordinal>, every other
// controller's by generateName <name>- (a Deployment's through its
// ReplicaSet, a CronJob's through its Job, both of which add to the name).
func podNames(kind, name, generateName string) podNaming {
	switch {
	case kind == "Pod" && name != "":
		return podNaming{exact: name}
	case kind == "Pod":
		return podNaming{pattern: generatedName(generateName)}
	case kind == "StatefulSet":
		return podNaming{pattern: regexp.QuoteMeta(name) + `-[0-9]+`}
	case name == "":
		return podNaming{pattern: generatedName(generateName)}
	default:
		return podNaming{pattern: generatedName(name + "-")}
	}
}

// generatedName is the pattern of a name generated from prefix.
func generatedName(prefix string) string {
	if len(prefix) > maxGeneratedName {
		prefix = prefix[:maxGeneratedName]
	}
	return regexp.QuoteMeta(prefix) + dnsLabel
}

// hostnamePattern is the sandbox hostname the kubelet sets for the pod: the
// node's own for a host-network pod; else spec.hostname or the pod's name
// (StatefulSet pods get theirs as hostname), cut to 63 characters, and with
// setHostnameAsFQDN the pod's full DNS name.
func hostnamePattern(kind string, names podNaming, spec *corev1.PodSpec, namespace string) podNaming {
	if spec.HostNetwork {
		return podNaming{pattern: nodeHostname}
	}
	host := names
	if spec.Hostname != "" && kind != "StatefulSet" {
		host = podNaming{exact: spec.Hostname}
	}
	if host.exact != "" && len(host.exact) > maxHostname {
		host.exact = strings.TrimRight(host.exact[:maxHostname], "-.")
	}
	if spec.SetHostnameAsFQDN == nil || !*spec.SetHostnameAsFQDN || spec.Subdomain == "" {
		return host
	}
	ns := dnsLabel
	if namespace != "" {
		ns = regexp.QuoteMeta(namespace)
	}
	return podNaming{pattern: host.regexp() + `\.` + regexp.QuoteMeta(spec.Subdomain) + `\.` + ns + `\.svc\.` + dnsDomain}
}
