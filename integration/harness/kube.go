package harness

import (
	"fmt"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// bestEffortOOMScoreAdj is the oom_score_adj the kubelet gives the
// containers of a BestEffort pod (no requests or limits), the only QoS
// class PodFromYAML emulates.
const bestEffortOOMScoreAdj = 1000

// PodFromYAML turns a Kubernetes Pod manifest into the CRI configurations
// kubelet would send for it, init containers first (Init set) in their
// order, for the fields the tests use: name, namespace,
// annotations, and per container name, image, command, args, env with
// values, workingDir, tty and stdin; the oom_score_adj of its QoS class
// (BestEffort); the kubelet's /etc/hosts and termination log
// (ContainerConfig.KubeletFiles); from the pod's and the container's securityContext the
// user and group ids, supplemental groups, capabilities, seccomp profile
// (RuntimeDefault or Unconfined), allowPrivilegeEscalation and
// readOnlyRootFilesystem, merged as the kubelet merges them. Anything else
// the manifest sets that changes what kubelet sends (volumes, privileged,
// envFrom, resources, ...) is an error, so a test cannot silently run a
// pod other than the one it wrote.
func PodFromYAML(doc []byte, handler string) (PodConfig, []ContainerConfig, error) {
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(doc, &pod); err != nil {
		return PodConfig{}, nil, fmt.Errorf("parse pod manifest: %w", err)
	}
	if pod.Kind != "Pod" {
		return PodConfig{}, nil, fmt.Errorf("manifest kind %q: want Pod", pod.Kind)
	}
	spec := pod.Spec
	if len(spec.Volumes) > 0 || spec.HostPID || spec.HostNetwork {
		return PodConfig{}, nil, fmt.Errorf("pod %s: volumes and host namespaces are not emulated", pod.Name)
	}
	// The service account token is a projected volume, a host directory,
	// which the pod VM cannot bind.
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		return PodConfig{}, nil, fmt.Errorf("pod %s: the service account token volume is not emulated: set automountServiceAccountToken: false", pod.Name)
	}
	podSC := spec.SecurityContext
	if podSC == nil {
		podSC = &corev1.PodSecurityContext{}
	}
	rest := *podSC
	rest.RunAsUser, rest.RunAsGroup, rest.SupplementalGroups, rest.SeccompProfile = nil, nil, nil, nil
	if !reflect.ValueOf(rest).IsZero() {
		return PodConfig{}, nil, fmt.Errorf("pod %s: of the pod's securityContext only runAsUser, runAsGroup, supplementalGroups and seccompProfile are emulated", pod.Name)
	}
	pc := PodConfig{Name: pod.Name, Namespace: pod.Namespace, Handler: handler, Annotations: pod.Annotations, Labels: pod.Labels}
	var ccs []ContainerConfig
	for i, c := range append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...) {
		init := i < len(spec.InitContainers)
		if init && c.RestartPolicy != nil {
			return PodConfig{}, nil, fmt.Errorf("init container %s: restartPolicy (sidecars) is not emulated", c.Name)
		}
		if len(c.VolumeMounts) > 0 || len(c.EnvFrom) > 0 || c.Resources.Limits != nil || c.Resources.Requests != nil {
			return PodConfig{}, nil, fmt.Errorf("container %s: volume mounts, envFrom, requests and limits are not emulated", c.Name)
		}
		sec, err := securityFromYAML(podSC, c.SecurityContext)
		if err != nil {
			return PodConfig{}, nil, fmt.Errorf("container %s: %w", c.Name, err)
		}
		oom := int64(bestEffortOOMScoreAdj)
		cc := ContainerConfig{
			Name: c.Name, Image: c.Image, Command: c.Command, Args: c.Args,
			WorkingDir: c.WorkingDir, TTY: c.TTY, Stdin: c.Stdin, StdinOnce: c.StdinOnce,
			OOMScoreAdj: &oom, Security: sec, KubeletFiles: true, Init: init,
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil {
				return PodConfig{}, nil, fmt.Errorf("container %s: env %s: valueFrom is not emulated", c.Name, e.Name)
			}
			if cc.Env == nil {
				cc.Env = map[string]string{}
			}
			cc.Env[e.Name] = e.Value
		}
		ccs = append(ccs, cc)
	}
	if spec.ShareProcessNamespace != nil && *spec.ShareProcessNamespace {
		for i := range ccs {
			ccs[i].SharePID = true
		}
	}
	return pc, ccs, nil
}

// securityFromYAML is the kubelet's effective security context of a
// container (pkg/kubelet/kuberuntime/security_context.go): the container's
// ids and seccomp profile over the pod's, the pod's supplemental groups,
// no_new_privs where allowPrivilegeEscalation is false, and the Unconfined
// profile where neither names one (no seccompDefault).
func securityFromYAML(pod *corev1.PodSecurityContext, c *corev1.SecurityContext) (*SecurityContext, error) {
	if c == nil {
		c = &corev1.SecurityContext{}
	}
	rest := *c
	rest.RunAsUser, rest.RunAsGroup, rest.Capabilities, rest.SeccompProfile = nil, nil, nil, nil
	rest.AllowPrivilegeEscalation, rest.ReadOnlyRootFilesystem = nil, nil
	if !reflect.ValueOf(rest).IsZero() {
		return nil, fmt.Errorf("of the securityContext only runAsUser, runAsGroup, capabilities, seccompProfile, allowPrivilegeEscalation and readOnlyRootFilesystem are emulated")
	}
	s := &SecurityContext{RunAsUser: pod.RunAsUser, RunAsGroup: pod.RunAsGroup, SupplementalGroups: pod.SupplementalGroups}
	if c.RunAsUser != nil {
		s.RunAsUser = c.RunAsUser
	}
	if c.RunAsGroup != nil {
		s.RunAsGroup = c.RunAsGroup
	}
	if c.Capabilities != nil {
		for _, a := range c.Capabilities.Add {
			s.CapAdd = append(s.CapAdd, string(a))
		}
		for _, d := range c.Capabilities.Drop {
			s.CapDrop = append(s.CapDrop, string(d))
		}
	}
	s.NoNewPrivs = c.AllowPrivilegeEscalation != nil && !*c.AllowPrivilegeEscalation
	s.ReadOnlyRootfs = c.ReadOnlyRootFilesystem != nil && *c.ReadOnlyRootFilesystem
	profile := pod.SeccompProfile
	if c.SeccompProfile != nil {
		profile = c.SeccompProfile
	}
	s.Seccomp = string(corev1.SeccompProfileTypeUnconfined)
	if profile != nil {
		switch profile.Type {
		case corev1.SeccompProfileTypeRuntimeDefault, corev1.SeccompProfileTypeUnconfined:
			s.Seccomp = string(profile.Type)
		default:
			return nil, fmt.Errorf("seccomp profile %s is not emulated", profile.Type)
		}
	}
	return s, nil
}
