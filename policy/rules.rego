# The rules of a generated pod policy. The generator appends
# `policy_data := {...}` (policy.Data as JSON), which every rule reads as pd.
#
# One rule per request kind, named after it, whose value is
# {"allow": bool, "rule": <the check that failed>, "reason": <what differs>}.
#
# Checks are written positively: <kind>_ok holds the names of the checks
# that hold, and a request is allowed only when every name in <kind>_checks
# is among them, so a check whose data is missing or malformed denies.
# CreateContainer and ExecProcess, the kinds decided most, also list their
# checks as a set (<kind>_check_set, the same names; a test holds them
# equal) and compare by set difference, which costs far less than
# iterating the list.
# <kind>_why explains failed checks and is evaluated only for a denial.
#
# Rules index rather than search: containers by name, mounts by destination,
# environment entries, capabilities and paths as sets (the input carries
# them as objects whose keys are the members), compared with set operations.
package agent_policy

# ---------------------------------------------------------------- verdicts

CreateSandbox := allowed if {
	all_hold(create_sandbox_checks, create_sandbox_ok)
} else := denial("create_sandbox", create_sandbox_checks, create_sandbox_ok, create_sandbox_why)

CreateContainer := {"allow": true, "rule": "", "reason": "", "discard_output": container_policy.logs != true, "write_back": write_back} if {
	count(create_container_check_set - create_container_ok) == 0
} else := denial("create_container", create_container_checks, create_container_ok, create_container_why)

ExecProcess := allowed if {
	count(exec_process_check_set - exec_process_ok) == 0
} else := denial("exec_process", exec_process_checks, exec_process_ok, exec_process_why)

StartContainer := id_verdict("StartContainer")

SignalProcess := id_verdict("SignalProcess")

WaitProcess := id_verdict("WaitProcess")

CloseStdin := id_verdict("CloseStdin")

ListProcesses := id_verdict("ListProcesses")

RemoveContainer := id_verdict("RemoveContainer")

ResizePty := id_verdict("ResizePty")

PauseContainer := id_verdict("PauseContainer")

ResumeContainer := id_verdict("ResumeContainer")

UpdateContainer := id_verdict("UpdateContainer")

StatsContainer := id_verdict("StatsContainer")

WaitOOM := id_verdict("WaitOOM")

GetReport := id_verdict("GetReport")

ConfigureNetwork := allowed if {
	all_hold(configure_network_checks, configure_network_ok)
} else := denial("configure_network", configure_network_checks, configure_network_ok, configure_network_why)

ShareVolume := allowed if {
	all_hold(share_volume_checks, share_volume_ok)
} else := denial("share_volume", share_volume_checks, share_volume_ok, share_volume_why)

PortForward := allowed if {
	all_hold(port_forward_checks, port_forward_ok)
} else := denial("port_forward", port_forward_checks, port_forward_ok, port_forward_why)

allowed := {"allow": true, "rule": "", "reason": ""}

all_hold(checks, ok) if {
	every c in checks {
		ok[c]
	}
}

# The first failed check in the kind's order names the rule; the other
# failures that have an explanation follow in the reason.
denial(prefix, checks, ok, why) := {"allow": false, "rule": concat(".", [prefix, first]), "reason": reason} if {
	failed := [c | some c in checks; not ok[c]]
	first := failed[0]
	others := [concat(".", [prefix, c]) | some c in array.slice(failed, 1, count(failed)); explained(why, c)]
	reason := with_others(explanation(why, first), others)
}

explained(why, check) if {
	some [c, _] in why
	c == check
}

explanation(why, check) := sort([msg | some [c, msg] in why; c == check])[0] if explained(why, check)

explanation(why, check) := "the check does not hold" if not explained(why, check)

with_others(detail, []) := detail

with_others(detail, others) := sprintf("%s (also failed: %s)", [detail, concat(", ", others)]) if count(others) > 0

# ---------------------------------------------------------------- helpers

# pd is policy_data typed `any`: OPA's type checker would otherwise infer the
# literal's exact shape and reject references to fields a particular policy
# leaves out (an optional namespace, a null user).
pd := object.get({"data": policy_data}, "data", null)

# Patterns in the policy are anchored at both ends.
matches(pattern, s) if regex.match(concat("", ["^(?:", pattern, ")$"]), s)

q(x) := json.marshal(x)

# The policy's entry for the container the request names: by the CRI
# annotation for CreateContainer, by the name the gate remembered for the
# container id otherwise.
container_policy := pd.containers[input.container_name] if input.container_name != ""

# flag_ok(requested, allowed): a flag the request sets needs the policy's
# leave; a value missing on either side is undefined and fails the check.
flag_ok(false, _)

flag_ok(true, true)

# ---------------------------------------------------------------- CreateSandbox

create_sandbox_checks := ["hostname", "sysctls"]

create_sandbox_ok contains "hostname" if matches(pd.pod.hostname_pattern, input.hostname)

create_sandbox_why contains ["hostname", msg] if {
	msg := sprintf("hostname %s does not match the policy's pattern %s", [q(input.hostname), q(pd.pod.hostname_pattern)])
}

# The VM's kernel is the pod's: the host sets there the pod's sysctls,
# each to the YAML's value, and may set those containerd adds to every
# sandbox (enable_unprivileged_ports and _icmp, on by default in 2.x) to
# containerd's values, which a pod's own setting overrides.
runtime_sysctls := {
	"net.ipv4.ip_unprivileged_port_start": "0",
	"net.ipv4.ping_group_range": "0 2147483647",
}

sandbox_sysctl_ok(name, value) if pod_sysctls[name] == value

sandbox_sysctl_ok(name, value) if {
	not pod_sysctls[name]
	runtime_sysctls[name] == value
}

create_sandbox_ok contains "sysctls" if {
	every name, value in input.sysctls {
		sandbox_sysctl_ok(name, value)
	}
	every name, value in pod_sysctls {
		input.sysctls[name] == value
	}
}

create_sandbox_why contains ["sysctls", msg] if {
	msg := sprintf("sysctls %s are not the pod's %s (with containerd's %s)", [q(input.sysctls), q(pod_sysctls), q(runtime_sysctls)])
}

# ---------------------------------------------------------------- CreateContainer

create_container_check_set := {
	"type", "name", "namespace", "image", "layers", "args", "env", "env_required", "cwd", "user",
	"capabilities", "no_new_privileges", "read_only_root", "mounts", "namespaces", "id_mappings",
	"masked_paths", "readonly_paths", "devices", "sysctls", "seccomp", "rlimits", "oom_score_adj",
	"rootfs_propagation", "stdio", "init_order", "block_volumes", "memory_volumes",
}

create_container_checks := [
	"type", "name", "namespace", "image", "layers", "args", "env", "env_required", "cwd", "user",
	"capabilities", "no_new_privileges", "read_only_root", "mounts", "namespaces", "id_mappings",
	"masked_paths", "readonly_paths", "devices", "sysctls", "seccomp", "rlimits", "oom_score_adj",
	"rootfs_propagation", "stdio", "init_order", "block_volumes", "memory_volumes",
]

create_container_ok contains "type" if input.container_type == "container"

create_container_why contains ["type", msg] if {
	msg := sprintf("container type %s is not \"container\"", [q(input.container_type)])
}

create_container_ok contains "name" if container_policy

create_container_why contains ["name", msg] if {
	input.container_name == ""
	msg := "the spec names no container (annotation io.kubernetes.cri.container-name)"
}

create_container_why contains ["name", msg] if {
	input.container_name != ""
	msg := sprintf("container name %s is not in the policy, which names %s", [q(input.container_name), q(object.keys(pd.containers))])
}

create_container_ok contains "namespace" if namespace_ok

namespace_ok if object.get(pd.pod, "namespace", "") == ""

namespace_ok if input.sandbox_namespace == pd.pod.namespace

create_container_why contains ["namespace", msg] if {
	msg := sprintf("pod namespace %s is not the policy's %s", [q(input.sandbox_namespace), q(pd.pod.namespace)])
}

create_container_ok contains "image" if image_ok

# The generator pins the reference the YAML names, so the annotation is
# usually the policy's exactly (containerd 2); normalizing is the slower
# fallback. containerd 1.7 names the image by the first name the node
# stores it under instead, a tag: a tag of the policy's repository passes,
# since the layers pin the content.
image_ok := true if {
	input.image == container_policy.image
} else := true if {
	same_image(input.image, container_policy.image)
} else := same_repository_tag(input.image, container_policy.image)

same_repository_tag(ref, pinned) if {
	not contains(ref, "@")
	[name, _] := split(pinned, "@")
	with_registry(drop_tag(ref)) == with_registry(drop_tag(name))
}

create_container_why contains ["image", msg] if {
	msg := sprintf("image %s is neither the policy's %s nor a tag of its repository", [q(input.image), q(container_policy.image)])
}

# The image's files reach the container only through dm-verity: the request's
# root hashes, lowest layer first, are the ones the policy pins, and the
# policy pins at least one, so a container whose entry lacks layers is denied
# rather than run on whatever the host attaches.
create_container_ok contains "layers" if {
	not input.unverified_rootfs
	pinned_layers
	input.layer_root_hashes == container_policy.layers
}

# pinned_layers holds when the entry pins at least one layer; a missing or
# null list pins none.
pinned_layers if count(container_policy.layers) > 0

create_container_why contains ["layers", "the host offered an unverified rootfs"] if input.unverified_rootfs

create_container_why contains ["layers", msg] if {
	not input.unverified_rootfs
	container_policy
	not pinned_layers
	msg := sprintf("the policy pins no layers for container %s", [q(input.container_name)])
}

create_container_why contains ["layers", msg] if {
	not input.unverified_rootfs
	pinned := count(container_policy.layers)
	pinned > 0
	pinned != count(input.layers)
	msg := sprintf("container %s: the policy pins %d layers, the request has %d", [q(input.container_name), pinned, count(input.layers)])
}

create_container_why contains ["layers", msg] if {
	not input.unverified_rootfs
	count(container_policy.layers) == count(input.layers)
	some i, l in input.layers
	l.root_hash != container_policy.layers[i]
	msg := sprintf("container %s: layer %d has root hash %s, the policy pins %s", [q(input.container_name), i, short_hash(l.root_hash), short_hash(container_policy.layers[i])])
}

short_hash(h) := concat("", [substring(h, 0, 12), "..."]) if count(h) > 12

short_hash(h) := h if count(h) <= 12

create_container_ok contains "args" if input.process.args == container_policy.args

create_container_why contains ["args", msg] if {
	msg := sprintf("command %s is not the policy's %s", [q(input.process.args), q(container_policy.args)])
}

create_container_ok contains "env" if count(process_env_unexpected) == 0

create_container_why contains ["env", msg] if msg := env_unexpected_msg(process_env_unexpected)

create_container_ok contains "env_required" if count(process_env_missing) == 0

create_container_why contains ["env_required", msg] if msg := env_missing_msg(process_env_missing)

create_container_ok contains "cwd" if input.process.cwd == container_policy.cwd

create_container_why contains ["cwd", msg] if {
	msg := sprintf("working directory %s is not the policy's %s", [q(input.process.cwd), q(container_policy.cwd)])
}

create_container_ok contains "user" if process_user_ok

create_container_why contains ["user", msg] if msg := user_mismatch

create_container_ok contains "capabilities" if container_policy.privileged == true

create_container_ok contains "capabilities" if {
	container_policy.privileged == false
	object.keys(input.process.capabilities.bounding) == policy_caps
	count(input.process.capabilities_beyond_bounding) == 0
	count(input.process.capabilities.inheritable) == 0
	count(input.process.capabilities.ambient) == 0
}

create_container_why contains ["capabilities", msg] if msg := caps_mismatch

create_container_ok contains "no_new_privileges" if input.process.no_new_privileges == container_policy.no_new_privileges

create_container_why contains ["no_new_privileges", msg] if {
	msg := sprintf("no_new_privileges is %v, the policy says %v", [input.process.no_new_privileges, container_policy.no_new_privileges])
}

create_container_ok contains "read_only_root" if input.read_only_root == container_policy.read_only_root

create_container_why contains ["read_only_root", msg] if {
	msg := sprintf("read-only root filesystem is %v, the policy says %v", [input.read_only_root, container_policy.read_only_root])
}

create_container_why contains ["mounts", msg] if {
	some m in mounts_unexplained
	msg := mount_mismatch(container_policy, m)
}

create_container_ok contains "namespaces" if {
	container_policy
	count(missing_namespaces) == 0
	count(unexpected_namespaces) == 0
	pid_sharing_ok
}

# A pid namespace with a path joins the sandbox's (CRI NamespaceMode POD):
# in the VM the pod's shared one, where the container sees, and with the
# capabilities may signal or trace, the other containers' processes. Only
# a pod with shareProcessNamespace asks for that.
pid_sharing_ok if not input.namespaces.pid

pid_sharing_ok if input.namespaces.pid == ""

pid_sharing_ok if {
	input.namespaces.pid != ""
	pd.pod.share_process_namespace == true
}

create_container_why contains ["namespaces", msg] if {
	container_policy
	not pid_sharing_ok
	msg := "the pod's shared PID namespace, which the policy allows only a pod with shareProcessNamespace"
}

# The namespace types runc knows; user only for a pod with hostUsers:
# false, time never (no YAML asks for one).
known_namespaces := {"pid", "ipc", "uts", "mount", "network", "cgroup"}

unexpected_namespaces contains t if {
	some t in object.keys(input.namespaces) - known_namespaces
	not user_namespace_ok(t)
}

user_namespace_ok("user") if {
	container_policy.user_namespace
	input.namespaces.user == ""
}

missing_namespaces contains "user" if {
	container_policy.user_namespace
	not "user" in object.keys(input.namespaces)
}

create_container_why contains ["namespaces", msg] if {
	container_policy
	some t in unexpected_namespaces
	msg := sprintf("a %s namespace, which the policy does not allow", [t])
}

# Id mappings: none, unless the pod asked for its own user namespace; then
# one range of the policy's size from container id 0 to a host range that
# starts at a multiple of the size above the VM's own ids, the same for
# groups.
create_container_ok contains "id_mappings" if {
	container_policy
	not container_policy.user_namespace
	count(input.uid_mappings) == 0
	count(input.gid_mappings) == 0
}

create_container_ok contains "id_mappings" if {
	ns := container_policy.user_namespace
	[[first, host, size]] := input.uid_mappings
	first == 0
	size == ns.size
	host >= ns.host_id_min
	host % size == 0
	input.gid_mappings == input.uid_mappings
}

create_container_why contains ["id_mappings", msg] if {
	container_policy
	not container_policy.user_namespace
	msg := sprintf("uid mappings %s and gid mappings %s, but the pod runs in the VM's user namespace (hostUsers is not false)", [q(input.uid_mappings), q(input.gid_mappings)])
}

create_container_why contains ["id_mappings", msg] if {
	ns := container_policy.user_namespace
	msg := sprintf("uid mappings %s and gid mappings %s are not one range [0, a multiple of %d from %d, %d] for both", [q(input.uid_mappings), q(input.gid_mappings), ns.size, ns.host_id_min, ns.size])
}

# The shim drops the PID namespace of a host-PID pod's containers (they
# share the VM's); the guest drops IPC, UTS and network namespaces (the VM
# is the pod's), but CRI sends them and their absence means host sharing.
missing_namespaces contains "pid" if {
	not pd.pod.host_pid
	not input.namespaces.pid
}

missing_namespaces contains "ipc" if {
	not pd.pod.host_ipc
	not input.namespaces.ipc
}

missing_namespaces contains "mount" if not input.namespaces.mount

create_container_why contains ["namespaces", msg] if {
	container_policy
	some t in missing_namespaces
	msg := sprintf("the container has no %s namespace of its own, which the policy requires", [t])
}

# Paths every CRI runtime masks or makes read-only in an unprivileged
# container (kubelet's defaults and containerd's).
required_masked_paths := {
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
}

required_readonly_paths := {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}

# Paths the runtimes' defaults may mask besides: masking any other path
# would hide a file of the image or a volume behind an empty one.
optional_masked_paths := {"/proc/interrupts", "/sys/devices/virtual/powercap"}

# The request's paths as sets, built once per request.
masked_path_set := object.keys(input.masked_paths)

readonly_path_set := object.keys(input.readonly_paths)

masked_paths_beyond := (masked_path_set - required_masked_paths) - optional_masked_paths

readonly_paths_beyond := readonly_path_set - required_readonly_paths

proc_unmasked if container_policy.privileged == true

proc_unmasked if container_policy.proc_mount_unmasked == true

create_container_ok contains "masked_paths" if proc_unmasked

create_container_ok contains "masked_paths" if {
	container_policy
	count(required_masked_paths - masked_path_set) == 0
	count(masked_paths_beyond) == 0
}

create_container_why contains ["masked_paths", msg] if {
	count(masked_paths_beyond) > 0
	msg := sprintf("paths %s are masked, which no runtime default masks", [q(sort(masked_paths_beyond))])
}

create_container_why contains ["masked_paths", msg] if {
	container_policy
	missing := required_masked_paths - masked_path_set
	msg := sprintf("paths %s are not masked, as they must be in an unprivileged container", [q(sort(missing))])
}

create_container_ok contains "readonly_paths" if proc_unmasked

create_container_ok contains "readonly_paths" if {
	container_policy
	count(required_readonly_paths - readonly_path_set) == 0
	count(readonly_paths_beyond) == 0
}

create_container_why contains ["readonly_paths", msg] if {
	count(readonly_paths_beyond) > 0
	msg := sprintf("paths %s are read-only, which no runtime default makes read-only", [q(sort(readonly_paths_beyond))])
}

create_container_why contains ["readonly_paths", msg] if {
	container_policy
	missing := required_readonly_paths - readonly_path_set
	msg := sprintf("paths %s are not read-only, as they must be in an unprivileged container", [q(sort(missing))])
}

create_container_ok contains "devices" if container_policy.privileged == true

# An unprivileged container gets no devices but its raw block volumes
# (see Block volumes at the end), and containerd's device cgroup rule,
# which denies every device (runc adds the standard ones: null, zero,
# tty, ...), followed only by the rules that allow those volumes.
create_container_ok contains "devices" if {
	container_policy.privileged == false
	every d in input.device_entries {
		block_volume_device_ok(d)
	}
	input.device_rules[0] == deny_all_device_rules[0]
	every rule in array.slice(input.device_rules, 1, count(input.device_rules)) {
		block_volume_rule_ok(rule)
	}
}

deny_all_device_rules := [{"allow": false, "type": "", "access": "rwm", "major": null, "minor": null}]

create_container_why contains ["devices", msg] if {
	container_policy.privileged == false
	not input.device_rules[0] == deny_all_device_rules[0]
	msg := sprintf("device cgroup rules %s do not start with containerd's %s", [q(input.device_rules), q(deny_all_device_rules)])
}

create_container_why contains ["devices", msg] if {
	container_policy
	some d in input.device_entries
	not block_volume_device_ok(d)
	msg := sprintf("device %s in an unprivileged container is not a raw block volume the policy allows there (block volumes at %s)", [q(d.path), q(sort(allowed_block_volumes))])
}

create_container_why contains ["devices", msg] if {
	container_policy
	some rule in array.slice(input.device_rules, 1, count(input.device_rules))
	not block_volume_rule_ok(rule)
	msg := sprintf("device cgroup rule %s allows access in an unprivileged container beyond its raw block volumes", [q(rule)])
}

pod_sysctls := object.get(pd.pod, "sysctls", {})

create_container_ok contains "sysctls" if {
	container_policy
	every k, v in input.sysctls {
		pod_sysctls[k] == v
	}
}

create_container_why contains ["sysctls", msg] if {
	container_policy
	some k, v in input.sysctls
	not pod_sysctls[k] == v
	msg := sprintf("sysctl %s=%s is not among the pod's %s", [k, q(v), q(pod_sysctls)])
}

# The filter is pinned whole: a rule the host adds can make setuid or
# capset return success without acting, before runc drops privileges.
create_container_ok contains "seccomp" if {
	container_policy
	not container_policy.seccomp
	input.seccomp == null
}

# One of the renderings the policy pins: a runtime's default profile
# differs between its release lines.
create_container_ok contains "seccomp" if container_policy.seccomp.sha256[input.seccomp.sha256]

create_container_why contains ["seccomp", msg] if {
	container_policy
	not container_policy.seccomp
	input.seccomp != null
	msg := sprintf("the spec carries a seccomp filter (default action %s, %d syscall rules); the policy runs the container without one", [input.seccomp.default_action, input.seccomp.syscall_rules])
}

create_container_why contains ["seccomp", msg] if {
	input.seccomp == null
	msg := sprintf("the spec carries no seccomp filter; the policy pins the %s profile", [container_policy.seccomp.profile])
}

create_container_why contains ["seccomp", msg] if {
	input.seccomp != null
	not container_policy.seccomp.sha256[input.seccomp.sha256]
	pinned := [sprintf("%s %s", [by, short_hash(h)]) | some h, by in container_policy.seccomp.sha256]
	msg := sprintf("the seccomp filter (default action %s, %d syscall rules, sha256 %s) is none of the policy's renderings of the %s profile (%s)", [input.seccomp.default_action, input.seccomp.syscall_rules, short_hash(input.seccomp.sha256), container_policy.seccomp.profile, concat(", ", sort(pinned))])
}

create_container_ok contains "rlimits" if rlimits_ok

create_container_why contains ["rlimits", msg] if msg := rlimits_msg

create_container_ok contains "oom_score_adj" if oom_score_adj_ok

create_container_why contains ["oom_score_adj", msg] if msg := oom_score_adj_msg

# Shared propagation would carry the container's mounts into the VM's
# namespace; only a privileged container, which may mount anyway, gets it.
create_container_ok contains "rootfs_propagation" if input.rootfs_propagation in {"", "private", "rprivate", "slave", "rslave"}

create_container_ok contains "rootfs_propagation" if container_policy.privileged == true

create_container_why contains ["rootfs_propagation", msg] if {
	msg := sprintf("root file system propagation %s in an unprivileged container", [q(input.rootfs_propagation)])
}

# containerd opens stdout and stderr for every container; where the
# policy allows no logs the agent discards the output (see
# CreateContainer's discard_output), so the streams themselves pass.
create_container_ok contains "stdio" if {
	flag_ok(input.stdio.stdin, container_policy.stdin)
	flag_ok(input.stdio.terminal, container_policy.terminal)
	flag_ok(input.process.terminal, container_policy.terminal)
	input.stdio.terminal == input.process.terminal
}

create_container_why contains ["stdio", msg] if {
	input.stdio.terminal != input.process.terminal
	msg := sprintf("the process's terminal is %v, the stdio request's %v", [input.process.terminal, input.stdio.terminal])
}

create_container_why contains ["stdio", msg] if {
	some [requested, allowed, msg] in [
		[input.stdio.stdin, container_policy.stdin, "stdin requested, the policy allows none"],
		[input.stdio.terminal, container_policy.terminal, "terminal requested, the policy allows none"],
		[input.process.terminal, container_policy.terminal, "terminal requested in the process, the policy allows none"],
	]
	not flag_ok(requested, allowed)
}

# Init containers run one after another in the YAML's order, each to
# completion, and all before the app containers (a sidecar, restartPolicy
# Always, need only have been created); once an app container has been
# created, an init container that is not a sidecar is not created again.
# The gate gives the pod's progress as input.pod_state {created,
# completed}: sets of container names.
init_containers := object.get(pd.pod, "init_containers", [])

init_index := {c.name: i | some i, c in init_containers}

init_done(c) if input.pod_state.completed[c.name]

init_done(c) if {
	c.sidecar
	input.pod_state.created[c.name]
}

inits_before(i) := array.slice(init_containers, 0, i)

app_created if {
	some name, _ in input.pod_state.created
	not init_index[name]
}

create_container_ok contains "init_order" if init_order_ok

# Alternatives in an else chain: the first that holds decides, and the
# others are not evaluated (a pod without init containers, the usual case,
# needs no more).
init_order_ok := true if {
	count(init_containers) == 0
} else := true if {
	container_policy
	not init_index[input.container_name]
	every c in init_containers {
		init_done(c)
	}
} else := true if {
	i := init_index[input.container_name]
	not app_created_blocks(init_containers[i])
	every c in inits_before(i) {
		init_done(c)
	}
}

app_created_blocks(c) if {
	not c.sidecar
	app_created
}

create_container_why contains ["init_order", msg] if {
	container_policy
	not init_index[input.container_name]
	pending := [c.name | some c in init_containers; not init_done(c)]
	count(pending) > 0
	msg := sprintf("app container %s before the init containers %s completed", [q(input.container_name), q(pending)])
}

create_container_why contains ["init_order", msg] if {
	i := init_index[input.container_name]
	pending := [c.name | some c in inits_before(i); not init_done(c)]
	count(pending) > 0
	msg := sprintf("init container %s before the init containers %s completed", [q(input.container_name), q(pending)])
}

create_container_why contains ["init_order", msg] if {
	i := init_index[input.container_name]
	app_created_blocks(init_containers[i])
	msg := sprintf("init container %s after the pod's app containers were created", [q(input.container_name)])
}

# ---------------------------------------------------------------- ExecProcess

exec_process_check_set := {
	"container", "args", "env", "env_required", "env_as_created", "cwd", "user", "capabilities", "no_new_privileges",
	"terminal", "stdin", "rlimits", "oom_score_adj",
}

# In this order a denial names its first failed check: a terminal the
# policy does not allow before the TERM=xterm that containerd adds for it.
exec_process_checks := [
	"container", "args", "terminal", "stdin", "env", "env_required", "env_as_created", "cwd", "user", "capabilities",
	"no_new_privileges", "rlimits", "oom_score_adj",
]

exec_process_ok contains "container" if container_known

exec_process_why contains ["container", unknown_container_msg]

exec_process_ok contains "args" if input.process.args in container_policy.exec

exec_process_why contains ["args", msg] if {
	msg := sprintf("command %s is not one the policy allows to exec in container %s: %s", [q(input.process.args), q(input.container_name), q(container_policy.exec)])
}

exec_process_ok contains "env" if count(process_env_unexpected) == 0

exec_process_why contains ["env", msg] if msg := env_unexpected_msg(process_env_unexpected)

exec_process_ok contains "env_required" if count(process_env_missing) == 0

exec_process_why contains ["env_required", msg] if msg := env_missing_msg(process_env_missing)

# containerd builds an exec's process from the container's own (the spec's
# process with the exec's args and terminal), so its environment is the one
# the container was created with, values from Secrets and the cluster's
# service variables included: input.container_env, which the gate
# remembers from the allowed CreateContainer. An exec with a terminal gets
# TERM=xterm over it (containerd's oci.WithEnv: it replaces a TERM, else
# adds one).
exec_expected_env := input.container_env if not input.process.terminal

exec_expected_env := object.union(
	{e: true | some e, _ in input.container_env; not startswith(e, "TERM=")},
	{"TERM=xterm": true},
) if input.process.terminal

exec_process_ok contains "env_as_created" if input.process.env == exec_expected_env

exec_process_why contains ["env_as_created", msg] if {
	container_known
	not input.container_env
	msg := sprintf("the environment container %s was created with is not known", [q(input.container_id)])
}

# Names only: the values may be secrets. The differences are taken in the
# body, where a missing side leaves the rule undefined.
exec_process_why contains ["env_as_created", msg] if {
	container_known
	changed := object.remove(exec_expected_env, input.process.env)
	extra := object.remove(input.process.env, exec_expected_env)
	names := {n | some e, _ in changed; [n, _] := split_env(e)}
	added := {n | some e, _ in extra; [n, _] := split_env(e)}
	msg := sprintf("the environment differs from the one container %s was created with: variables %s are not as created, %s are not the container's", [q(input.container_id), q(sort(names)), q(sort(added))])
}

split_env(e) := [substring(e, 0, i), substring(e, i + 1, -1)] if i := indexof(e, "=")

exec_process_ok contains "user" if process_user_ok

exec_process_why contains ["user", msg] if msg := user_mismatch

# An exec'd process gets no capability beyond the container's, and none
# to inherit across execve.
exec_process_ok contains "capabilities" if container_policy.privileged == true

exec_process_ok contains "capabilities" if {
	container_policy.privileged == false
	count(process_caps_beyond_policy) == 0
	count(process_caps_inherited) == 0
}

exec_process_why contains ["capabilities", msg] if {
	some [name, extra] in process_caps_beyond_policy
	msg := sprintf("%s capabilities %s are beyond the container's %s", [name, q(extra), q(sort(policy_caps))])
}

exec_process_why contains ["capabilities", msg] if {
	some [name, caps] in process_caps_inherited
	msg := sprintf("%s capabilities %s, which the policy never gives", [name, q(caps)])
}

# CRI execs in the container's working directory.
exec_process_ok contains "cwd" if input.process.cwd == container_policy.cwd

exec_process_why contains ["cwd", msg] if {
	container_known
	msg := sprintf("working directory %s is not the container's %s", [q(input.process.cwd), q(container_policy.cwd)])
}

# A terminal only where the YAML gives the container one, and the stdio
# request and the process agree.
exec_process_ok contains "terminal" if {
	flag_ok(input.process.terminal, container_policy.terminal)
	input.stdio.terminal == input.process.terminal
}

exec_process_why contains ["terminal", msg] if {
	container_known
	msg := sprintf("terminal %v (stdio terminal %v) for a process in container %s, whose policy allows a terminal: %v", [input.process.terminal, input.stdio.terminal, q(input.container_name), container_policy.terminal])
}

exec_process_ok contains "rlimits" if rlimits_ok

exec_process_why contains ["rlimits", msg] if msg := rlimits_msg

exec_process_ok contains "oom_score_adj" if oom_score_adj_ok

exec_process_why contains ["oom_score_adj", msg] if msg := oom_score_adj_msg

# An exec'd process may set no_new_privileges where the container does not,
# never the other way round.
exec_process_ok contains "no_new_privileges" if container_policy.no_new_privileges == false

exec_process_ok contains "no_new_privileges" if input.process.no_new_privileges == true

exec_process_why contains ["no_new_privileges", "no_new_privileges is off, the policy requires it"] if container_known

exec_process_ok contains "stdin" if flag_ok(input.stdio.stdin, container_policy.stdin)

exec_process_why contains ["stdin", msg] if {
	container_known
	msg := sprintf("stdin for a process in container %s, the policy allows none", [q(input.container_name)])
}

# ---------------------------------------------------------------- requests that name only ids (or nothing)

rule_prefix := {
	"StartContainer": "start_container",
	"SignalProcess": "signal_process",
	"WaitProcess": "wait_process",
	"CloseStdin": "close_stdin",
	"ListProcesses": "list_processes",
	"RemoveContainer": "remove_container",
	"ResizePty": "resize_pty",
	"PauseContainer": "pause_container",
	"ResumeContainer": "resume_container",
	"UpdateContainer": "update_container",
	"StatsContainer": "stats_container",
	"WaitOOM": "wait_oom",
	"GetReport": "get_report",
}

# Kinds that name no container: the policy's leave alone decides them.
pod_wide_kinds := {"WaitOOM", "GetReport"}

id_checks(kind) := ["request"] if pod_wide_kinds[kind]

id_checks(kind) := ["request", "container"] if not pod_wide_kinds[kind]

id_ok(kind) := {c |
	some c in id_checks(kind)
	id_check(kind, c)
}

id_check(kind, "request") if pd.requests[kind] == true

id_check(_, "container") if container_known

id_why(kind) := {
	["request", sprintf("the policy does not allow %s requests", [kind])],
	["container", unknown_container_msg],
}

id_verdict(kind) := allowed if {
	all_hold(id_checks(kind), id_ok(kind))
} else := denial(rule_prefix[kind], id_checks(kind), id_ok(kind), id_why(kind))

container_known if {
	input.container_known == true
	container_policy
}

unknown_container_msg := sprintf("container %s was not created under the policy", [q(input.container_id)]) if {
	not input.container_known == true
}

unknown_container_msg := sprintf("container %s (%s) is not in the policy", [q(input.container_id), q(input.container_name)]) if {
	input.container_known == true
}

# ---------------------------------------------------------------- ConfigureNetwork

# The host runs CNI and picks the pod's addresses, so the policy cannot pin
# them. It keeps the host from reaching traffic that stays inside the VM:
# lo is never the host's to configure, and no address, route, gateway or
# neighbour may lie in a forbidden prefix (loopback, unspecified,
# multicast). A route's destination is forbidden only when it lies wholly
# inside such a prefix, so default routes (0.0.0.0/0, ::/0) pass.
# Input gives MACs and addresses in canonical form (see enforce.Input), so
# they compare as strings.
configure_network_checks := [
	"request", "interface_count", "interface_name", "interface_mac", "interface_mtu",
	"interface_address", "route_device", "route_destination", "route_gateway",
	"route_source", "neighbor_device", "neighbor_ip", "neighbor_mac",
]

network := pd.network

# The forbidden prefixes; undefined, and so every check that needs them
# failed, when the policy's list is missing.
network_forbidden := p if {
	p := network.forbidden_prefixes
	is_array(p)
}

configure_network_ok contains "request" if network.allow == true

configure_network_why contains ["request", "the policy does not allow the host to configure the pod's network"]

configure_network_ok contains "interface_count" if count(input.interfaces) <= network.max_interfaces

configure_network_why contains ["interface_count", msg] if {
	msg := sprintf("%d interfaces, the policy allows at most %d", [count(input.interfaces), network.max_interfaces])
}

configure_network_ok contains "interface_name" if {
	every nic in input.interfaces {
		interface_name_ok(nic.name)
	}
}

interface_name_ok(name) if {
	name != "lo"
	matches(network.interface_pattern, name)
}

configure_network_why contains ["interface_name", msg] if {
	some nic in input.interfaces
	nic.name != "lo"
	not matches(network.interface_pattern, nic.name)
	msg := sprintf("interface name %s does not match the policy's pattern %s", [q(nic.name), q(network.interface_pattern)])
}

configure_network_why contains ["interface_name", "interface lo is the VM's loopback, never the host's to configure"] if {
	some nic in input.interfaces
	nic.name == "lo"
}

# A unicast MAC has the low bit of its first octet clear; all zeros is no
# station's.
unicast_mac(mac) if {
	regex.match(`^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$`, mac)
	mac != "00:00:00:00:00:00"
}

configure_network_ok contains "interface_mac" if {
	every nic in input.interfaces {
		unicast_mac(nic.mac)
	}
}

configure_network_why contains ["interface_mac", msg] if {
	some nic in input.interfaces
	not unicast_mac(nic.mac)
	msg := sprintf("interface %s has MAC %s, which is not a unicast address", [q(nic.name), nic.mac])
}

configure_network_ok contains "interface_mtu" if {
	every nic in input.interfaces {
		mtu_in_range(nic.mtu)
	}
}

configure_network_why contains ["interface_mtu", msg] if {
	some nic in input.interfaces
	not mtu_in_range(nic.mtu)
	msg := sprintf("interface %s has MTU %d, outside the policy's %d to %d", [q(nic.name), nic.mtu, network.mtu_min, network.mtu_max])
}

mtu_in_range(mtu) if {
	mtu >= network.mtu_min
	mtu <= network.mtu_max
}

# [ip, interface, address] per interface address: net.cidr_contains_matches
# reads the first element of each, so one call judges every address.
interface_addresses := [[split(a, "/")[0], nic.name, a] |
	some nic in input.interfaces
	some a in nic.addresses
]

interface_names := {nic.name | some nic in input.interfaces}

interface_ips := {ip | some [ip, _, _] in interface_addresses}

# forbidden_matches(items) are the [prefix index, item index] pairs of the
# items inside a forbidden prefix.
forbidden_matches(items) := net.cidr_contains_matches(network_forbidden, items)

configure_network_ok contains "interface_address" if count(forbidden_matches(interface_addresses)) == 0

configure_network_why contains ["interface_address", msg] if {
	some [f, j] in forbidden_matches(interface_addresses)
	[_, name, a] := interface_addresses[j]
	msg := sprintf("interface %s has address %s, inside the forbidden prefix %s", [q(name), a, network_forbidden[f]])
}

configure_network_ok contains "route_device" if {
	every r in input.routes {
		device_ok(r.device)
	}
}

device_ok(device) if {
	device != "lo"
	interface_names[device]
}

configure_network_why contains ["route_device", msg] if {
	some r in input.routes
	not device_ok(r.device)
	msg := sprintf("route to %s goes through device %s, which is not one of the request's interfaces %s", [r.destination, q(r.device), q(sort(interface_names))])
}

route_destinations := [r.destination | some r in input.routes]

configure_network_ok contains "route_destination" if count(forbidden_matches(route_destinations)) == 0

configure_network_why contains ["route_destination", msg] if {
	some [f, j] in forbidden_matches(route_destinations)
	msg := sprintf("route destination %s lies inside the forbidden prefix %s", [route_destinations[j], network_forbidden[f]])
}

route_gateways := [r.gateway | some r in input.routes; r.gateway != ""]

configure_network_ok contains "route_gateway" if count(forbidden_matches(route_gateways)) == 0

configure_network_why contains ["route_gateway", msg] if {
	some [f, j] in forbidden_matches(route_gateways)
	msg := sprintf("route gateway %s lies inside the forbidden prefix %s", [route_gateways[j], network_forbidden[f]])
}

# A preferred source must be the pod's own: another would let replies to
# the pod's traffic go where the host says.
configure_network_ok contains "route_source" if {
	every r in input.routes {
		source_ok(r.source)
	}
}

source_ok("")

source_ok(ip) if interface_ips[ip]

configure_network_why contains ["route_source", msg] if {
	some r in input.routes
	not source_ok(r.source)
	msg := sprintf("route to %s has source %s, which is not an address of the request's interfaces %s", [r.destination, r.source, q(sort(interface_ips))])
}

configure_network_ok contains "neighbor_device" if {
	every nb in input.neighbors {
		device_ok(nb.device)
	}
}

configure_network_why contains ["neighbor_device", msg] if {
	some nb in input.neighbors
	not device_ok(nb.device)
	msg := sprintf("neighbour %s is on device %s, which is not one of the request's interfaces %s", [nb.ip, q(nb.device), q(sort(interface_names))])
}

neighbor_ips := [nb.ip | some nb in input.neighbors]

configure_network_ok contains "neighbor_ip" if count(forbidden_matches(neighbor_ips)) == 0

configure_network_why contains ["neighbor_ip", msg] if {
	some [f, j] in forbidden_matches(neighbor_ips)
	msg := sprintf("neighbour %s lies inside the forbidden prefix %s", [neighbor_ips[j], network_forbidden[f]])
}

configure_network_ok contains "neighbor_mac" if {
	every nb in input.neighbors {
		unicast_mac(nb.mac)
	}
}

configure_network_why contains ["neighbor_mac", msg] if {
	some nb in input.neighbors
	not unicast_mac(nb.mac)
	msg := sprintf("neighbour %s has MAC %s, which is not a unicast address", [nb.ip, nb.mac])
}

# ---------------------------------------------------------------- images

# Images are equal when their normalized references are: docker.io's
# implicit registry and library/ prefix made explicit, and a tag dropped
# where a digest pins the content.
same_image(a, b) if normalize_image(a) == normalize_image(b)

normalize_image(ref) := concat("@", [with_registry(drop_tag(name)), digest]) if {
	[name, digest] := split(ref, "@")
}

normalize_image(ref) := with_registry(ref) if not contains(ref, "@")

# A tag is a colon after the last slash.
drop_tag(name) := substring(name, 0, last_index(name, ":")) if last_index(name, ":") > last_index(name, "/")

drop_tag(name) := name if last_index(name, ":") <= last_index(name, "/")

last_index(s, c) := count(s) - 1 - indexof(strings.reverse(s), c) if indexof(s, c) >= 0

last_index(s, c) := -1 if indexof(s, c) < 0

with_registry(name) := concat("/", ["docker.io", "library", name]) if not contains(name, "/")

with_registry(name) := normalize_path(split(name, "/")) if contains(name, "/")

# The first component is a registry when it has a dot or a colon or is
# localhost; docker.io's official images live under library/.
normalize_path(parts) := concat("/", array.concat(["docker.io"], parts)) if not is_registry(parts[0])

normalize_path(parts) := concat("/", ["docker.io", "library", parts[1]]) if {
	parts[0] in {"docker.io", "index.docker.io"}
	count(parts) == 2
}

normalize_path(parts) := concat("/", array.concat(["docker.io"], array.slice(parts, 1, count(parts)))) if {
	parts[0] in {"docker.io", "index.docker.io"}
	count(parts) > 2
}

normalize_path(parts) := concat("/", parts) if {
	is_registry(parts[0])
	not parts[0] in {"docker.io", "index.docker.io"}
}

is_registry(host) if contains(host, ".")

is_registry(host) if contains(host, ":")

is_registry("localhost")

# ---------------------------------------------------------------- environment

# The process's entries neither in the policy's env (a set: the keys of an
# object) nor matching one of its patterns; set difference leaves only the
# few entries that need a pattern. The difference is taken in the rule body,
# not in the comprehension, where an error would make an empty list. Both
# sets are rules, built once per request.
process_env_unexpected := unexpected if {
	beyond := process_env_entries - policy_env_entries
	unexpected := [e | some e in beyond; not regex.match(env_pattern, e)]
}

process_env_entries := object.keys(judged_env)

# The environment the env checks judge: the process's, but for an exec
# with a terminal TERM as its container has it. containerd sets TERM=xterm
# over such an exec's environment; env_as_created judges that change.
judged_env := input.process.env if not exec_with_terminal

judged_env := object.union(
	{e: true | some e, _ in input.process.env; not startswith(e, "TERM=")},
	{e: true | some e, _ in input.container_env; startswith(e, "TERM=")},
) if exec_with_terminal

exec_with_terminal if {
	input.container_env
	input.process.terminal
}

policy_env_entries := object.keys(container_policy.env)

# The policy's env patterns as one anchored alternation, matched once per
# entry (OPA caches the compiled expression by its text).
env_pattern := concat("", ["^(?:", concat("|", [concat("", ["(?:", p, ")"]) | some p in container_policy.env_patterns]), ")$"]) if {
	count(container_policy.env_patterns) > 0
}

process_env_missing := (policy_env_entries - process_env_entries) | process_env_names_missing

# Names the process must have whose value only a pattern pins.
process_env_names_missing := {sprintf("%s=...", [n]) |
	some n in object.get(container_policy, "env_required_names", [])
	not input.process.env_names[n]
}

env_unexpected_msg(bad) := sprintf("environment variable %s is not allowed by the policy", [q(sort(bad)[0])]) if count(bad) > 0

env_missing_msg(missing) := sprintf("environment variable %s that the policy sets is missing", [q(sort(missing)[0])]) if count(missing) > 0

# ---------------------------------------------------------------- user

process_user_ok := true if {
	input.process.user.uid == container_policy.user.uid
	input.process.user.gid == container_policy.user.gid
	groups_ok
} else := true if {
	container_policy
	object.get(container_policy, "user", null) == null
}

# The supplementary groups are pinned, root's too: the primary group, the
# groups the image's /etc/group gives the user (CRI merges them in) and the
# pod's supplementalGroups and fsGroup, no more and no fewer. Both sides
# are rules, computed once per request.
groups_ok if process_gids == policy_gids

process_gids := {g | some g in input.process.user.additional_gids}

policy_gids := {g | some g in object.get(container_policy.user, "additional_gids", [])} | {container_policy.user.gid}

user_mismatch := sprintf("user id %d is not the policy's %d", [input.process.user.uid, container_policy.user.uid]) if {
	input.process.user.uid != container_policy.user.uid
} else := sprintf("group id %d is not the policy's %d", [input.process.user.gid, container_policy.user.gid]) if {
	input.process.user.gid != container_policy.user.gid
} else := msg if {
	not groups_ok
	msg := sprintf("supplementary groups %s are not the policy's %s", [q(sort(process_gids)), q(sort(policy_gids))])
}

# ---------------------------------------------------------------- capabilities

policy_caps := {c | some c in container_policy.capabilities} if container_policy

# [set name, capabilities] for each of the process's sets but bounding that
# holds capabilities outside its bounding set or the policy's.
# [set name, capabilities] for each of the process's sets but bounding
# that holds capabilities outside its bounding set (Input finds them).
process_caps_beyond_bounding := input.process.capabilities_beyond_bounding

# CRI sends no inheritable or ambient capabilities: ambient ones would give a
# non-root process capabilities across execve that the container's own
# process does not keep.
process_caps_inherited := [[name, sort(object.keys(input.process.capabilities[name]))] |
	some name in ["inheritable", "ambient"]
	count(input.process.capabilities[name]) > 0
]

process_caps_beyond_policy := [[name, sort(extra)] |
	some name in ["bounding", "effective", "permitted", "inheritable", "ambient"]
	extra := object.keys(input.process.capabilities[name]) - policy_caps
	count(extra) > 0
]

caps_mismatch := msg if {
	bounding := object.keys(input.process.capabilities.bounding)
	bounding != policy_caps
	msg := sprintf("bounding capabilities differ from the policy's: added %s, missing %s", [q(sort(bounding - policy_caps)), q(sort(policy_caps - bounding))])
}

caps_mismatch := msg if {
	object.keys(input.process.capabilities.bounding) == policy_caps
	[name, extra] := process_caps_beyond_bounding[0]
	msg := sprintf("%s capabilities %s are not in the policy's set %s", [name, q(extra), q(sort(policy_caps))])
}

caps_mismatch := msg if {
	object.keys(input.process.capabilities.bounding) == policy_caps
	count(process_caps_beyond_bounding) == 0
	[name, caps] := process_caps_inherited[0]
	msg := sprintf("%s capabilities %s, which the policy never gives", [name, q(caps)])
}

# ---------------------------------------------------------------- rlimits, OOM score

# The limits as runc applies them (the last of a type) equal the policy's.
rlimits_ok if input.process.rlimits == object.get(container_policy, "rlimits", {})

rlimits_msg := sprintf("resource limits %s are not the policy's %s", [q(input.process.rlimits), q(object.get(container_policy, "rlimits", {}))]) if {
	container_policy
	not rlimits_ok
}

# A score below the policy's range would have the OOM killer pick the
# agent first; none at all would inherit the agent's.
oom_score_adj_ok if {
	[low, high] := container_policy.oom_score_adj
	input.process.oom_score_adj >= low
	input.process.oom_score_adj <= high
}

oom_score_adj_msg := sprintf("oom_score_adj %s is outside the policy's %s", [q(input.process.oom_score_adj), q(container_policy.oom_score_adj)]) if {
	container_policy
	not oom_score_adj_ok
}

# ---------------------------------------------------------------- mounts

# containerd's CRI plugin adds mounts to every container itself (/proc,
# /dev, /sys, /dev/shm, /etc/hostname, ...). Input judges them against its
# table of those mounts, which does not depend on the policy
# (enforce.runtimeMounts: type, flags, file system data, propagation, and
# whether an unprivileged container needs them read-only); it hands the
# rules only the mounts beyond that table, each with its "runtime" verdict
# ("writable": a runtime mount that must be read-only unless privileged;
# "other") and the reason, which the rules name when the policy does not
# allow the mount either.

# Propagation a mount may have: shared would carry mounts between the
# container and the VM.
quiet_propagation := {"", "private", "rprivate", "slave", "rslave"}

# The request's mounts that are neither an acceptable runtime mount nor
# one the policy allows.
mounts_unexplained := [m |
	some m in input.mounts_beyond_runtime
	not privileged_runtime_mount(m)
	not policy_mount_ok(m)
]

privileged_runtime_mount(m) if {
	m.runtime == "writable"
	container_policy.privileged == true
}

# Input refuses a second mount at a destination.
create_container_ok contains "mounts" if {
	container_policy
	count(mounts_unexplained) == 0
	count(mounts_missing) == 0
}

# Dropping a mount changes what the container sees as much as adding one:
# without /dev the image's device nodes show, without a volume the image's
# files stand in for the pod's. containerd always sends these runtime
# mounts, the kubelet every volume mount the policy names.
required_runtime_mounts := {"/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/dev/shm", "/etc/hostname", "/etc/resolv.conf"}

mounts_missing := (required_runtime_mounts | object.keys(container_policy.mounts)) - object.keys(input.mount_destinations)

create_container_why contains ["mounts", msg] if {
	count(mounts_missing) > 0
	msg := sprintf("mounts at %s are missing", [q(sort(mounts_missing))])
}

policy_mount_ok(m) if {
	allowed := container_policy.mounts[m.destination]
	m.type == allowed.type
	# matches(), inline: this runs for every volume of every container.
	regex.match(concat("", ["^(?:", allowed.source_pattern, ")$"]), m.source)
	writable_ok(m.read_only, allowed.read_only)
	m.propagation in quiet_propagation
	sub_path_ok(m, allowed)
}

# A directory subPath names its volume and the path inside it, which the
# policy must allow; a mount without one binds what its source is.
sub_path_ok(m, _) if not m.sub_path

sub_path_ok(m, allowed) if {
	regex.match(concat("", ["^(?:", allowed.sub_path_volume_pattern, ")$"]), m.sub_path.volume)
	regex.match(concat("", ["^(?:", allowed.sub_path_pattern, ")$"]), m.sub_path.path)
}

# The destinations of the host files whose guest copy the host gets back
# with the init's exit (the termination message): those the policy marks
# write_back, only in a container whose output the host may read, as a
# message is output.
write_back := sort([d |
	some d, m in container_policy.mounts
	m.write_back == true
	input.mount_destinations[d]
]) if {
	container_policy.logs == true
} else := []

# writable_ok(read_only, allowed_read_only): a writable mount needs the
# leave a policy mount gives by not being read-only; a value missing or
# not boolean on either side fails the check.
writable_ok(true, allowed) if is_boolean(allowed)

writable_ok(false, false)

mount_mismatch(pol, m) := m.runtime_why if not pol.mounts[m.destination]

mount_mismatch(pol, m) := policy_mount_why(pol.mounts[m.destination], m)

# Why a mount at a destination the policy names is not the policy's: the
# first difference.
policy_mount_why(allowed, m) := msg if {
	m.type != allowed.type
	msg := sprintf("mount at %s has type %s, the policy's is %s", [q(m.destination), q(m.type), q(allowed.type)])
} else := msg if {
	not matches(allowed.source_pattern, m.source)
	msg := sprintf("mount at %s has source %s, which does not match the policy's %s", [q(m.destination), q(m.source), q(allowed.source_pattern)])
} else := msg if {
	not writable_ok(m.read_only, allowed.read_only)
	msg := sprintf("mount at %s is writable, the policy has it read-only", [q(m.destination)])
} else := msg if {
	not m.propagation in quiet_propagation
	msg := sprintf("mount at %s has propagation %s", [q(m.destination), q(m.propagation)])
}

# ---------------------------------------------------------------- PortForward

# kubectl port-forward reaches the pod's loopback, where services listen
# that expect only the pod's own containers as clients: only the ports the
# policy names are open to the host.
port_forward_checks := ["port"]

forward_ports := object.get(object.get(pd, "port_forward", {}), "ports", [])

port_forward_ok contains "port" if {
	is_array(forward_ports)
	some p in forward_ports
	p == input.port
}

port_forward_why contains ["port", msg] if {
	count(forward_ports) == 0
	msg := sprintf("port %d: the policy allows no port forwarding", [input.port])
}

port_forward_why contains ["port", msg] if {
	count(forward_ports) > 0
	msg := sprintf("port %d is not among the ports the policy allows to forward to, %v", [input.port, forward_ports])
}

# ---------------------------------------------------------------- ShareVolume

# The host puts a kubelet-managed volume (ConfigMap, Secret, projected,
# downward API) into the VM: only the pod's own volumes, of their kind, no
# larger than the policy says, and, where the policy pins them, with
# exactly the keys and content the owner gave. Input already refused trees
# with other file types or links leaving the volume.
share_volume_checks := ["volume", "size", "content"]

policy_volumes := object.get(pd.pod, "volumes", [])

share_volume_policy := v if {
	some v in policy_volumes
	v.kind == input.volume_kind
	regex.match(concat("", ["^(?:", v.name_pattern, ")$"]), input.volume_name)
}

share_volume_ok contains "volume" if share_volume_policy

share_volume_why contains ["volume", msg] if {
	msg := sprintf("%s volume %s is not one of the pod's volumes in the policy", [input.volume_kind, q(input.volume_name)])
}

share_volume_ok contains "size" if input.total_bytes <= share_volume_policy.max_bytes

share_volume_why contains ["size", msg] if {
	msg := sprintf("%s volume %s holds %d bytes, the policy allows at most %d", [input.volume_kind, q(input.volume_name), input.total_bytes, share_volume_policy.max_bytes])
}

share_volume_ok contains "content" if {
	share_volume_policy
	not share_volume_policy.keys
}

share_volume_ok contains "content" if input.keys == share_volume_policy.keys

share_volume_why contains ["content", msg] if {
	pinned := share_volume_policy.keys
	msg := sprintf("%s volume %s: keys and content %s are not the pinned %s", [input.volume_kind, q(input.volume_name), q(input.keys), q(pinned)])
}

# ---------------------------------------------------------------- Block volumes

# A raw block volume (volumeDevices) is a host block device the host attaches
# as a disk; the agent creates its node at the container path the request
# names, with the guest's device numbers. The policy pins the paths: the
# pod's volumeDevices[].devicePath of the container. Its content is the
# host's, neither confidential nor verified.
allowed_block_volumes := {p | some p in object.get(container_policy, "block_devices", [])}

create_container_ok contains "block_volumes" if {
	container_policy
	every p, _ in input.block_volumes {
		block_volume_ok(p)
	}
}

block_volume_ok(p) if {
	allowed_block_volumes[p]
	some d in input.device_entries
	d.path == p
	d.type == "b"
}

create_container_why contains ["block_volumes", msg] if {
	some p, _ in input.block_volumes
	not allowed_block_volumes[p]
	msg := sprintf("block volume at %s is not one the policy allows (block volumes at %s)", [q(p), q(sort(allowed_block_volumes))])
}

create_container_why contains ["block_volumes", msg] if {
	some p, _ in input.block_volumes
	allowed_block_volumes[p]
	not block_volume_ok(p)
	msg := sprintf("block volume at %s has no block device entry there in the spec", [q(p)])
}

# A device entry of an unprivileged container: a block volume's.
block_volume_device_ok(d) if {
	d.type == "b"
	input.block_volumes[d.path]
	allowed_block_volumes[d.path]
}

# A device cgroup rule after containerd's deny-all: an allow rule for one
# block volume's device (the agent gives it the guest device's numbers).
block_volume_rule_ok(rule) if {
	rule.allow == true
	rule.type == "b"
	regex.match("^[rwm]+$", rule.access)
	some d in input.device_entries
	block_volume_device_ok(d)
	d.major == rule.major
	d.minor == rule.minor
}

# ---------------------------------------------------------------- emptyDir volumes

# The host names the emptyDir volumes it gives medium Memory
# (input.memory_volumes, by volume name; Input admits only names of the
# spec's emptyDir mounts): the guest holds those in a tmpfs, every other
# emptyDir on the pod's encrypted scratch disk. The medium is the policy's:
# a mount it marks memory must be named, and no other. The size is not
# judged: the guest caps it at its memory, and the host, which sizes the VM,
# decides availability anyway.
create_container_ok contains "memory_volumes" if count(memory_volumes_mismatched) == 0

memory_volumes_mismatched contains name if {
	# a kubelet volume's bind is never one of containerd's own mounts
	some m in input.mounts_beyond_runtime
	m.type == "bind"
	name := emptydir_volume_name(m.source)
	pol := container_policy.mounts[m.destination]
	object.get(pol, "memory", false) != (name in object.keys(input.memory_volumes))
}

emptydir_volume_name(source) := parts[n - 1] if {
	parts := split(source, "/")
	n := count(parts)
	n >= 3
	parts[n - 2] == "kubernetes.io~empty-dir"
	parts[n - 3] == "volumes"
}

create_container_why contains ["memory_volumes", msg] if {
	count(memory_volumes_mismatched) > 0
	msg := sprintf("emptyDir volumes %s get another medium than the policy's (the host named %s as medium Memory)", [q(sort(memory_volumes_mismatched)), q(sort(object.keys(input.memory_volumes)))])
}
