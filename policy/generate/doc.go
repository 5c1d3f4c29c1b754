// Package generate writes pod policies from Kubernetes YAML: for each
// workload it derives policy.Data from the pod template and the images,
// builds the module with policy.Build, and writes the YAML back with the
// module inside an initdata document (policy/initdata) in the pod
// template's io.katacontainers.config.hypervisor.cc_init_data annotation
// and every image reference pinned by digest.
//
// # Input and output
//
// The input is one or more YAML documents. Pod (v1), Deployment,
// StatefulSet, DaemonSet, ReplicaSet (apps/v1), Job and CronJob (batch/v1)
// get a policy. Other kinds pass through byte for byte; ReplicationController,
// PodTemplate, List and any unknown kind that carries containers are refused,
// since their pods would run without a policy. A workload document is edited
// in its YAML node tree (gopkg.in/yaml.v3), so comments and key order survive;
// it is re-indented. Running the generator on its own output gives the same
// policies and the same YAML: the annotation is replaced, Kata's policy
// annotation is removed, and references already pinned stay as written.
//
// # What is pinned and what is a pattern
//
// The policy follows what the kubelet and containerd's CRI plugin (v2.4,
// and 1.7: see testdata/containerd for requests captured from both) put
// into each container's OCI spec.
//
// Pinned for the pod: the init containers in the YAML's order, sidecars
// (restartPolicy: Always) marked; the agent lets each run only after the
// ones before it completed (a sidecar: was created), app containers only
// after all, and no init container but a sidecar again once an app
// container was created.
//
// Pinned exactly: the image digest; the dm-verity root hash of each image
// layer, lowest first (see Images); the process argv (the YAML's command
// and args after the kubelet's $(VAR) expansion, else the image's
// entrypoint and cmd; command replaces the entrypoint and drops cmd, args
// replaces cmd); the working directory (workingDir, the image's, or "/");
// the user (uid, gid and the supplementary groups a process may hold:
// runAsUser/runAsGroup of the container over the pod, else the image's USER,
// with /etc/passwd and /etc/group read from the image as containerd does, and
// supplementalGroups and fsGroup); the capability set (containerd's default
// 14, with the YAML's add and drop, ALL included; every capability when
// privileged); privileged, allowPrivilegeEscalation: false
// (no_new_privileges), readOnlyRootFilesystem, seccompProfile
// RuntimeDefault/Localhost (a filter is required, pinned in full: for
// RuntimeDefault each rendering runtimeDefaultSeccomp names, containerd 2's
// and containerd 1.7's by default, which differ), procMount Unmasked; the
// environment entries known in advance: PATH (containerd's default unless the
// image or YAML sets it), the image's Env, env entries with a value, and
// downward-API fields the YAML fixes (namespace, service account, labels the
// template sets); the command lines the host may exec (exec probes,
// expanded as the kubelet does, and exec lifecycle hooks, plus settings);
// stdin (the YAML's stdin, or settings), tty, logs (settings); the pod's
// namespace when the YAML sets metadata.namespace; hostNetwork, hostPID,
// hostIPC and sysctls; the container paths of raw block volumes
// (volumeDevices[].devicePath: block_devices, the only paths at which a
// container gets a block device).
//
// Patterns, because the cluster picks the value after the policy is made:
// the hostname and HOSTNAME (a Pod's spec.hostname or name is exact; a
// controller's pods are <name>-<generated>, a StatefulSet's <name>-<ordinal>;
// a host-network pod sees the node's, and its sandbox may have none); env entries from valueFrom (any value,
// with a warning for ConfigMaps and Secrets; shapes for pod IPs, UIDs and
// resources) and values that $(VAR)-refer to them; envFrom (any variable
// named with the envFrom's prefix, with any value, and a warning; with no
// prefix any name at all); the kubelet's service-link variables
// (KUBERNETES_SERVICE_HOST etc., and every service's when enableServiceLinks
// is not false, by their name and value shapes); mount sources (kubelet
// paths under <kubeletRootDir>/pods/<uid>/: volumes/kubernetes.io~empty-dir,
// ~configmap, ~secret, ~projected, ~downward-api and ~csi by volume name,
// volume-subpaths/<volume>/<container>/<index> for subPath, the projected
// service-account token kube-api-access-xxxxx unless
// automountServiceAccountToken is false, containers/<name>/<8 hex> for the
// termination-message file, etc-hosts; hostPath sources are exact; a
// persistent volume's only to the pod's volume directory, with a warning).
// The termination-message mount alone is marked write_back: the host gets
// back what the container wrote there (the kubelet reads it after the exit),
// unless the container's logs are withheld.
//
// A variable whose value only a pattern pins is still required by name
// wherever the kubelet or containerd always send it (an env entry the YAML
// names, unless it reads an optional ConfigMap, Secret or file key; an image
// entry a family could override; PATH, HOSTNAME; an Indexed Job's index).
// An exec must carry exactly the environment its container was created
// with: containerd builds an exec's process from the container's.
//
// An argument that $(VAR)-refers to a value known only by a pattern is an
// error: argv has no patterns.
//
// # Images
//
// An ImageResolver turns a reference into its digest, config and user
// files. ContainerdImages reads a node's containerd store (the images must be
// pulled there); StaticImages is a fixed table. With no resolver, only
// references pinned by digest are accepted, and the image is taken to set no
// environment, entrypoint, working directory or user (a warning says so, and
// pods whose image does set them are refused); a container without a command
// is then an error. OCILayoutImages reads an OCI image layout directory
// through package internal/ocilayout, which the layer converter shares,
// finding an image by its ref name in index.json: a full name matches the
// normalized reference, a bare tag (v1) the reference's tag; a reference
// with a digest takes the entry of that digest. Every blob it reads
// (indexes, manifests, configs and the layers the user files come from) is
// checked against its size and digest.
//
// A LayerSource (Options.Layers) converts each image's layers as the host
// will attach them (ext4 with a dm-verity tree; package layer does it for
// the CLI) and returns their diff IDs and root hashes. The generator checks
// the diff IDs against the image config's rootfs.diff_ids, so the root
// hashes belong to the pinned image, and writes the root hashes into the
// container's Layers. Every container pins at least one layer: an image that
// no layer source serves (or Layers nil) fails the generation, naming the
// container and the image, since the rules deny a container whose entry pins
// no layers and any request that offers an unverified rootfs instead. Each
// image is converted once per Generate.
//
// # Settings
//
// Settings say what the YAML cannot. The file is JSON or YAML; unknown keys
// are an error. Every field is optional:
//
//	containers:
//	  "*":                     # every container
//	    logs: true             # the host may read stdout/stderr (default true)
//	    stdin: false           # the host may write stdin even without the YAML's stdin: true
//	  app:                     # the container named app, in every workload
//	    exec:                  # further command lines the host may exec
//	    - ["/bin/sh", "-c", "cat /status"]
//	    envPatterns:           # further env entries it may have (RE2, anchored)
//	    - "DEBUG=[01]"
//	requests:                  # kinds decided by the container alone
//	  ResizePty: false         # default: all allowed
//	kubeletRootDir: /var/lib/kubelet
//	network:                   # what the host may configure of the VM's network
//	  allow: true              # false: ConfigureNetwork denied, the VM has only lo
//	  interfacePattern: "eth[0-9]+"  # interface names (RE2, anchored); lo never
//	  maxInterfaces: 1
//	  mtuMin: 68
//	  mtuMax: 65535
//	  forbiddenPrefixes:       # added to the defaults, which always apply
//	  - 10.0.0.0/24            # e.g. the node network
//	seccompProfiles:           # content of the Localhost profiles the pods name
//	  profiles/audit.json: {"defaultAction": "SCMP_ACT_LOG"}
//	runtimeDefaultSeccomp:     # whose RuntimeDefault profile is accepted
//	- containerd-2             # default: containerd-2 and containerd-1.7
//	pinVolumeContent: false    # pin ConfigMap/Secret volumes to the objects in the input
//	portForward:               # ports on the pod's loopback kubectl port-forward may reach
//	  declaredPorts: true      # the containers' TCP containerPorts (default true)
//	  ports: [6060]            # and these
//
// A named container's stdin and logs win over "*"; exec and envPatterns of
// both apply. DefaultSettings allows StartContainer, SignalProcess,
// WaitProcess, CloseStdin, ListProcesses, RemoveContainer, ResizePty,
// PauseContainer, ResumeContainer, UpdateContainer, StatsContainer, WaitOOM
// and GetReport (an attestation report reveals only what a verifier
// checks), logs for every container, and nothing else.
//
// # Network
//
// The host runs CNI and picks the pod's addresses, so the policy cannot pin
// them; by default it lets the host configure one interface named eth<n>
// with any MTU from 68 to 65535, its addresses, routes through it and
// permanent neighbours on it, and keeps the host from anything that reaches
// traffic staying inside the VM: lo is never configured, and no address,
// gateway, neighbour or route destination may lie in a forbidden prefix
// (DefaultForbiddenPrefixes: loopback 127.0.0.0/8 and ::1/128, unspecified
// 0.0.0.0/32 and ::/128, multicast 224.0.0.0/4 and ff00::/8, broadcast
// 255.255.255.255/32; default routes pass, and link-local 169.254.0.0/16,
// through which Calico routes, is allowed). MACs must be unicast and a
// route's preferred source one of the interfaces' addresses.
//
// # Volumes
//
// The kubelet writes ConfigMap, Secret, projected and downward-API volumes
// on the host; the shim shares each with the VM (ShareVolume) and again at
// every update. The policy lets the host share the pod's own volumes of
// those kinds, by name (the service-account token's kube-api-access-<5>
// too, unless automountServiceAccountToken is false), each at most 1 MiB
// per source (64 KiB for the token). With pinVolumeContent, a ConfigMap or
// Secret volume whose object is in the input beside the workload is pinned
// to its keys and content: the host can serve nothing else for it, and an
// update it cannot serve is refused while the container keeps what it had.
//
// # Port forwarding
//
// kubectl port-forward connects the host to a port on the pod's loopback,
// where a pod may serve what it means only for its own containers. The
// policy opens the ports the containers declare (containerPorts of protocol
// TCP, init containers' too) and those the settings name; every other
// PortForward is denied.
package generate
