package harness

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// PodFromYAML turns a Kubernetes Pod manifest into the CRI configurations
// kubelet would send for it, for the fields the tests use: name, namespace,
// annotations, and per container name, image, command, args, env with
// values, workingDir, tty and stdin. Anything else the manifest sets that
// changes what kubelet sends (volumes, security contexts, envFrom, ...) is an
// error, so a test cannot silently run a pod other than the one it wrote.
func PodFromYAML(doc []byte, handler string) (PodConfig, []ContainerConfig, error) {
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(doc, &pod); err != nil {
		return PodConfig{}, nil, fmt.Errorf("parse pod manifest: %w", err)
	}
	if pod.Kind != "Pod" {
		return PodConfig{}, nil, fmt.Errorf("manifest kind %q: want Pod", pod.Kind)
	}
	spec := pod.Spec
	if len(spec.Volumes) > 0 || len(spec.InitContainers) > 0 || spec.SecurityContext != nil || spec.HostPID || spec.HostNetwork {
		return PodConfig{}, nil, fmt.Errorf("pod %s: volumes, init containers, pod security contexts and host namespaces are not emulated", pod.Name)
	}
	pc := PodConfig{Name: pod.Name, Namespace: pod.Namespace, Handler: handler, Annotations: pod.Annotations, Labels: pod.Labels}
	var ccs []ContainerConfig
	for _, c := range spec.Containers {
		if len(c.VolumeMounts) > 0 || c.SecurityContext != nil || len(c.EnvFrom) > 0 || c.Resources.Limits != nil {
			return PodConfig{}, nil, fmt.Errorf("container %s: volume mounts, security contexts, envFrom and limits are not emulated", c.Name)
		}
		cc := ContainerConfig{
			Name: c.Name, Image: c.Image, Command: c.Command, Args: c.Args,
			WorkingDir: c.WorkingDir, TTY: c.TTY, Stdin: c.Stdin, StdinOnce: c.StdinOnce,
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
	return pc, ccs, nil
}
