package generate

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// The environment a container's process gets is built in three places, and
// this file follows each:
//
//  1. containerd's CRI plugin starts from the OCI default PATH, adds
//     TERM=xterm for a container with a tty (oci.WithTTY), sets HOSTNAME to
//     the sandbox's hostname, and then applies the image's Env followed by
//     the environment the kubelet sent, in one list. Only PATH, TERM and
//     HOSTNAME, which were there before, are replaced by a later entry (or
//     removed by a bare NAME); every other entry is appended, so an image
//     entry and a kubelet entry of the same name both stay.
//  2. The kubelet sends envFrom (every key of a ConfigMap or Secret, under a
//     prefix), then env in order (a later entry replaces an earlier one of
//     the same name; $(VAR) in a value expands to an earlier entry or a
//     service variable), then the service-link variables whose names are not
//     taken.
//  3. The service-link variables: KUBERNETES_* always (the API server's
//     service), and those of every service in the pod's namespace unless
//     enableServiceLinks is false.
//
// What is known when the policy is generated becomes an exact entry; what the
// cluster decides later (values from ConfigMaps, Secrets, the downward API,
// service addresses) becomes a pattern.

// jobCompletionIndex is the variable the Job controller adds to the
// containers of an Indexed Job.
const jobCompletionIndex = "JOB_COMPLETION_INDEX"

// ttyTerm is the TERM containerd gives a container with a tty (oci.WithTTY).
const ttyTerm = "xterm"

// ociDefaultPath is the PATH of containerd's default OCI spec (pkg/oci).
const ociDefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// anyValue matches any value, newlines included (secrets may hold them).
const anyValue = `(?s:.*)`

// envValue is a value known exactly or only by a pattern.
type envValue struct {
	exact   bool
	value   string // the value, when exact
	pattern string // an RE2 pattern for the value, when not exact
}

func exactValue(v string) envValue   { return envValue{exact: true, value: v} }
func patternValue(p string) envValue { return envValue{pattern: p} }

func (v envValue) regexp() string {
	if v.exact {
		return regexp.QuoteMeta(v.value)
	}
	return v.pattern
}

// envSource is a family of variables whose names are known only by a
// pattern: an envFrom, or the service-link variables.
type envSource struct {
	what    string // for messages
	name    *regexp.Regexp
	nameRe  string
	valueRe string
}

func newEnvSource(what, nameRe, valueRe string) envSource {
	return envSource{what: what, name: regexp.MustCompile("^(?:" + nameRe + ")$"), nameRe: nameRe, valueRe: valueRe}
}

// Service-link variables (kubelet's envvars.FromServices): for a service
// "my-svc" with address A and port P/TCP named "http": MY_SVC_SERVICE_HOST=A,
// MY_SVC_SERVICE_PORT=P, MY_SVC_SERVICE_PORT_HTTP=P, MY_SVC_PORT=tcp://A:P,
// MY_SVC_PORT_P_TCP=tcp://A:P and its _PROTO, _PORT and _ADDR.
const (
	ipValue    = `[0-9A-Fa-f.:]+`
	portValue  = `[0-9]+`
	protoValue = `(?:tcp|udp|sctp)`
	urlValue   = protoValue + `://(?:[0-9.]+|\[[0-9A-Fa-f.:]+\]):[0-9]+`
)

func serviceSources(service string) []envSource {
	return []envSource{
		newEnvSource("service host", service+`_SERVICE_HOST`, ipValue),
		newEnvSource("service port", service+`_SERVICE_PORT(?:_[A-Z0-9_]+)?`, portValue),
		newEnvSource("service address", service+`_PORT(?:_[0-9]+_(?:TCP|UDP|SCTP))?`, urlValue),
		newEnvSource("service protocol", service+`_PORT_[0-9]+_(?:TCP|UDP|SCTP)_PROTO`, protoValue),
		newEnvSource("service port number", service+`_PORT_[0-9]+_(?:TCP|UDP|SCTP)_PORT`, portValue),
		newEnvSource("service IP", service+`_PORT_[0-9]+_(?:TCP|UDP|SCTP)_ADDR`, ipValue),
	}
}

// envFromSource is an envFrom: any ConfigMap or Secret key (kubelet takes
// keys as they are) under the prefix, with any value.
func envFromSource(prefix string) envSource {
	return newEnvSource("envFrom", regexp.QuoteMeta(prefix)+`[-._a-zA-Z0-9]+`, anyValue)
}

// envInput is what the environment of one container depends on.
type envInput struct {
	container *corev1.Container
	// indexedJob adds the Job controller's JOB_COMPLETION_INDEX.
	indexedJob         bool
	image              []string // the image config's Env
	hostname           envValue
	enableServiceLinks bool
	fieldRef           func(path string) (envValue, bool)
	warn               func(string)
}

// containerEnv is the computed environment of a container.
type containerEnv struct {
	exact    map[string]bool // NAME=VALUE entries the process must have
	patterns []string        // NAME=VALUE patterns for entries it may have
	// required are names the process must have although a pattern
	// gives their value: what containerd always sets (PATH, HOSTNAME).
	required []string
	// kubelet is the environment the kubelet sends, which $(VAR) in
	// command and args expands against.
	kubelet envLookup
}

// envLookup resolves $(NAME) against the kubelet's variables: known ones
// first, then the families a name may belong to.
type envLookup struct {
	known   map[string]envValue
	sources []envSource
}

// resolve returns what $(name) expands to.
func (l envLookup) resolve(name string) envValue {
	if v, ok := l.known[name]; ok {
		return v
	}
	var alts []string
	for _, s := range l.sources {
		if s.name.MatchString(name) {
			alts = append(alts, s.valueRe)
		}
	}
	if len(alts) == 0 {
		return exactValue("$(" + name + ")") // kubelet leaves an unknown reference as written
	}
	alts = append(alts, regexp.QuoteMeta("$("+name+")"))
	return patternValue("(?:" + strings.Join(alts, "|") + ")")
}

func computeEnv(in envInput) (containerEnv, error) {
	c := in.container
	lookup := envLookup{known: map[string]envValue{}}
	for _, ef := range c.EnvFrom {
		what := "envFrom"
		switch {
		case ef.ConfigMapRef != nil:
			what = "envFrom ConfigMap " + ef.ConfigMapRef.Name
		case ef.SecretRef != nil:
			what = "envFrom Secret " + ef.SecretRef.Name
		}
		src := envFromSource(ef.Prefix)
		src.what = what
		lookup.sources = append(lookup.sources, src)
		if ef.Prefix == "" {
			in.warn(fmt.Sprintf("container %s: %s has no prefix, so the policy allows any variable with any value beside the pinned ones; set a prefix to narrow it", c.Name, what))
		} else {
			in.warn(fmt.Sprintf("container %s: %s: variables named %s... are allowed with any value (not pinned)", c.Name, what, ef.Prefix))
		}
	}

	// Service variables are sent only under names not taken, so a known name
	// keeps its value; $(VAR) in env values sees them too.
	if in.enableServiceLinks {
		lookup.sources = append(lookup.sources, serviceSources(`[A-Z][A-Z0-9_]*`)...)
	} else {
		lookup.sources = append(lookup.sources, serviceSources("KUBERNETES")...)
	}

	// env entries in order: a value expands against the entries before it.
	// optional holds the names whose last entry the kubelet leaves out when
	// its source lacks the key (an optional ConfigMap, Secret or file key).
	optional := map[string]bool{}
	for _, e := range c.Env {
		optional[e.Name] = optionalSource(e.ValueFrom)
		var v envValue
		switch {
		case e.Value != "":
			v = expand(e.Value, lookup)
		case e.ValueFrom != nil:
			var err error
			v, err = valueFrom(c.Name, e, in)
			if err != nil {
				return containerEnv{}, err
			}
		default:
			v = exactValue("")
		}
		lookup.known[e.Name] = v
	}

	// The Job controller of an Indexed Job adds JOB_COMPLETION_INDEX to a
	// container that does not set it, from the pod's completion-index
	// annotation.
	if _, set := lookup.known[jobCompletionIndex]; in.indexedJob && !set {
		lookup.known[jobCompletionIndex] = patternValue(`[0-9]+`)
	}

	env := containerEnv{exact: map[string]bool{}, kubelet: lookup}
	// PATH, HOSTNAME and a tty's TERM: replaced by the last image or
	// kubelet entry.
	path := exactValue(strings.TrimPrefix(ociDefaultPath, "PATH="))
	hostname := in.hostname
	replaced := map[string]*envValue{"PATH": &path, "HOSTNAME": &hostname}
	present := map[string]bool{"PATH": true, "HOSTNAME": true}
	presetNames := []string{"PATH", "HOSTNAME"}
	if c.TTY {
		term := exactValue(ttyTerm)
		replaced["TERM"], present["TERM"] = &term, true
		presetNames = append(presetNames, "TERM")
	}
	// runc gives the process the last value of a name: an image entry
	// holds only where no later image entry, kubelet entry or family member
	// of the same name follows it.
	imageValues := map[string]string{}
	var imageNames []string
	for _, kv := range in.image {
		name, value, hasValue := strings.Cut(kv, "=")
		if slot, ok := replaced[name]; ok {
			*slot, present[name] = exactValue(value), hasValue
			continue
		}
		if !hasValue {
			continue
		}
		if _, seen := imageValues[name]; !seen {
			imageNames = append(imageNames, name)
		}
		imageValues[name] = value
	}
	for _, name := range imageNames {
		if _, overridden := lookup.known[name]; overridden {
			continue
		}
		value := imageValues[name]
		var alts []string
		for _, s := range lookup.sources {
			if s.name.MatchString(name) {
				alts = append(alts, s.valueRe)
			}
		}
		if len(alts) == 0 {
			env.exact[name+"="+value] = true
			continue
		}
		alts = append([]string{regexp.QuoteMeta(value)}, alts...)
		env.patterns = append(env.patterns, regexp.QuoteMeta(name)+"=(?:"+strings.Join(alts, "|")+")")
		// containerd always sends the image's entry; a family member may
		// only replace its value.
		env.required = append(env.required, name)
	}
	for _, name := range sortedKeys(lookup.known) {
		v := lookup.known[name]
		if slot, ok := replaced[name]; ok {
			*slot, present[name] = v, true
			continue
		}
		if v.exact {
			env.exact[name+"="+v.value] = true
			continue
		}
		env.patterns = append(env.patterns, regexp.QuoteMeta(name)+"="+v.pattern)
		// The kubelet always sends an entry the YAML names (and the Job
		// controller its index): only its value is left to a pattern, so
		// the name is required, in every exec too.
		if !optional[name] {
			env.required = append(env.required, name)
		}
	}
	for _, name := range presetNames {
		v := *replaced[name]
		if _, explicit := lookup.known[name]; !explicit {
			// A family may still set it, after the image.
			var alts []string
			for _, s := range lookup.sources {
				if s.name.MatchString(name) {
					alts = append(alts, s.valueRe)
				}
			}
			if len(alts) > 0 {
				if present[name] {
					alts = append([]string{v.regexp()}, alts...)
				}
				env.patterns = append(env.patterns, name+"=(?:"+strings.Join(alts, "|")+")")
				if present[name] {
					env.required = append(env.required, name)
				}
				continue
			}
		}
		if !present[name] {
			continue
		}
		if v.exact {
			env.exact[name+"="+v.value] = true
		} else {
			env.patterns = append(env.patterns, name+"="+v.pattern)
			env.required = append(env.required, name)
		}
	}
	for _, s := range lookup.sources {
		env.patterns = append(env.patterns, "(?:"+s.nameRe+")="+s.valueRe)
	}
	return env, nil
}

// optionalSource reports whether the kubelet leaves an entry with this
// source out when the key is missing (optional: true), rather than failing
// the container.
func optionalSource(src *corev1.EnvVarSource) bool {
	optional := func(o *bool) bool { return o != nil && *o }
	switch {
	case src == nil:
		return false
	case src.ConfigMapKeyRef != nil:
		return optional(src.ConfigMapKeyRef.Optional)
	case src.SecretKeyRef != nil:
		return optional(src.SecretKeyRef.Optional)
	case src.FileKeyRef != nil:
		return optional(src.FileKeyRef.Optional)
	}
	return false
}

// valueFrom is the pattern for an env entry whose value the cluster fills in.
func valueFrom(container string, e corev1.EnvVar, in envInput) (envValue, error) {
	src := e.ValueFrom
	switch {
	case src.FieldRef != nil:
		if v, ok := in.fieldRef(src.FieldRef.FieldPath); ok {
			return v, nil
		}
		return envValue{}, fmt.Errorf("container %s: env %s: fieldRef %q is not a field the downward API offers to env", container, e.Name, src.FieldRef.FieldPath)
	case src.ResourceFieldRef != nil:
		// Quantities the kubelet prints as integers (cores rounded up, bytes).
		return patternValue(`[0-9]+`), nil
	case src.ConfigMapKeyRef != nil:
		in.warn(fmt.Sprintf("container %s: env %s comes from ConfigMap %s key %s: its value is not pinned", container, e.Name, src.ConfigMapKeyRef.Name, src.ConfigMapKeyRef.Key))
	case src.SecretKeyRef != nil:
		in.warn(fmt.Sprintf("container %s: env %s comes from Secret %s key %s: its value is not pinned", container, e.Name, src.SecretKeyRef.Name, src.SecretKeyRef.Key))
	case src.FileKeyRef != nil:
		in.warn(fmt.Sprintf("container %s: env %s comes from file %s key %s: its value is not pinned", container, e.Name, src.FileKeyRef.Path, src.FileKeyRef.Key))
	default:
		in.warn(fmt.Sprintf("container %s: env %s has a valueFrom this generator does not know: its value is not pinned", container, e.Name))
	}
	return patternValue(anyValue), nil
}

// expand follows the kubelet's $(VAR) expansion: $(NAME) is replaced by the
// variable's value, $$ is a literal $, a reference to an unknown variable or
// an unterminated $( stays as written.
func expand(s string, lookup envLookup) envValue {
	var parts []envValue
	literal := func(t string) {
		if n := len(parts); n > 0 && parts[n-1].exact {
			parts[n-1].value += t
			return
		}
		parts = append(parts, exactValue(t))
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			literal(s[i : i+1])
			continue
		}
		switch next := s[i+1]; next {
		case '$':
			literal("$")
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				literal("$(")
				i++
				continue
			}
			v := lookup.resolve(s[i+2 : i+2+end])
			if v.exact {
				literal(v.value)
			} else {
				parts = append(parts, v)
			}
			i += 2 + end
		default:
			literal(s[i : i+2])
			i++
		}
	}
	if len(parts) == 0 {
		return exactValue("")
	}
	if len(parts) == 1 {
		return parts[0]
	}
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(p.regexp())
	}
	return patternValue(b.String())
}

// expandArgv expands command or args as the kubelet does before it sends
// them; a reference to a variable known only by a pattern cannot be pinned.
func expandArgv(what, container string, argv []string, lookup envLookup) ([]string, error) {
	if len(argv) == 0 {
		return nil, nil
	}
	out := make([]string, len(argv))
	for i, a := range argv {
		v := expand(a, lookup)
		if !v.exact {
			return nil, fmt.Errorf("container %s: %s[%d] %q refers to a variable whose value is not known when the policy is generated (a valueFrom, envFrom or service variable), so the argument cannot be pinned; write the value out", container, what, i, a)
		}
		out[i] = v.value
	}
	return out, nil
}

// expandStatic is the kubelet's expansion for exec probes: only the
// container's env entries with a literal value, unexpanded themselves.
func expandStatic(argv []string, env []corev1.EnvVar) []string {
	lookup := envLookup{known: map[string]envValue{}}
	for _, e := range env {
		lookup.known[e.Name] = exactValue(e.Value)
	}
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = expand(a, lookup).value
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
