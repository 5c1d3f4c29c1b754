package harness

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// KubeTools are the Kubernetes binaries: hack/kubernetes.sh builds them
// into one directory (CONTRAST_KUBERNETES) and kine onto PATH.
type KubeTools struct {
	APIServer         string
	ControllerManager string
	Scheduler         string
	Kubelet           string
	Kubectl           string
	Kine              string
	Unshare           string
}

// FindKubeTools reads CONTRAST_KUBERNETES (the directory hack/kubernetes.sh
// prints) and finds kine on PATH. A missing variable is an error, never a
// reason to skip: `make test` sets it.
func FindKubeTools() (KubeTools, error) {
	dir := os.Getenv("CONTRAST_KUBERNETES")
	if dir == "" {
		return KubeTools{}, errors.New("CONTRAST_KUBERNETES is not set: it must name the directory hack/kubernetes.sh builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl into (run the tests through `make test`, which sets it)")
	}
	var errs []error
	in := func(name string) string {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("CONTRAST_KUBERNETES=%s: %w (build it with hack/kubernetes.sh)", dir, err))
		}
		return p
	}
	look := func(name, hint string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s not found on PATH (%s): %w", name, hint, err))
		}
		return p
	}
	t := KubeTools{
		APIServer:         in("kube-apiserver"),
		ControllerManager: in("kube-controller-manager"),
		Scheduler:         in("kube-scheduler"),
		Kubelet:           in("kubelet"),
		Kubectl:           in("kubectl"),
		Kine:              look("kine", "hack/kubernetes.sh builds it into ~/.cache/contrast/bin"),
		Unshare:           look("unshare", "apt package util-linux"),
	}
	if err := errors.Join(errs...); err != nil {
		return KubeTools{}, err
	}
	return t, nil
}

// KubeOptions configures a single-node cluster on a running private
// containerd.
type KubeOptions struct {
	Tools KubeTools
	// NodeLabels are set by the kubelet when it registers the node.
	NodeLabels map[string]string
	// StartTimeout bounds the wait for the node to be Ready (default 2m).
	StartTimeout time.Duration
}

// Kube is a running single-node Kubernetes cluster: kine (etcd's API over
// SQLite), kube-apiserver, kube-controller-manager, kube-scheduler and a
// kubelet whose runtime is the private containerd C. Everything it writes
// lies under Dir (inside C's directory), its processes are ended by PID,
// and the kubelet runs in a mount namespace of its own, so that what it
// would otherwise write outside Dir lands inside it:
//
//   - the kernel tunables it sets at start (vm.overcommit_memory,
//     vm.panic_on_oom, kernel.panic, kernel.panic_on_oops,
//     kernel.keys.root_max{keys,bytes}) are files under Dir bound over
//     their /proc/sys entries, holding the values it wants, so it changes
//     no host setting;
//   - /var/log (the /var/log/containers links) and /var/lib (the device
//     plugin socket under /var/lib/kubelet/device-plugins) are directories
//     under Dir bound over the host's, in its namespace only;
//   - its root directory is a shared bind mount made before the namespace
//     is, so the volume mounts it makes there (Secret tmpfs, ...) reach the
//     host's namespace, where containerd bind-mounts them into containers.
//
// The node's IP lives on an empty bridge of its own with a /32 (the
// kubelet refuses a loopback address, and this kernel has no dummy links).
// There is no kube-proxy and no cluster DNS: Service IPs do not route.
type Kube struct {
	C   *Containerd
	Dir string
	// NodeName is the name the kubelet registers.
	NodeName string
	// NodeIP is the node's address (on NodeBridge).
	NodeIP     string
	NodeBridge string
	// Kubeconfig is the cluster-admin kubeconfig kubectl uses.
	Kubeconfig string
	// Server is the API server's URL.
	Server string
	// KubeletRoot is the kubelet's root directory; KubeletLog its log.
	KubeletRoot string
	// PodLogs is the kubelet's podLogsDir.
	PodLogs string

	tools KubeTools
	pki   *pki
	procs []*kubeProc
	// sysctls are the host's values of the tunables the kubelet would
	// set, read before it starts, to prove after Stop that none changed.
	sysctls map[string]string
}

// kubeProc is one component process.
type kubeProc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	logF   *os.File
	exited chan struct{}
	err    error
}

// kubeletTunables are the /proc/sys entries the kubelet writes at start
// (setupKernelTunables) and the values it wants.
var kubeletTunables = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// StartKube starts a single-node cluster on c and waits until the node is
// Ready and the default service account exists. On error everything it
// started is stopped again.
func StartKube(ctx context.Context, c *Containerd, opts KubeOptions) (_ *Kube, retErr error) {
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 2 * time.Minute
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(filepath.Base(c.Dir), "c"), 16, 32)
	if err != nil {
		return nil, fmt.Errorf("containerd instance directory %s: not named by the harness", c.Dir)
	}
	k := &Kube{
		C:          c,
		Dir:        filepath.Join(c.Dir, "k"),
		NodeName:   fmt.Sprintf("contrast-node-%06x", n),
		NodeIP:     fmt.Sprintf("10.%d.%d.1", 208+int(n>>8)%8, n%256),
		NodeBridge: fmt.Sprintf("kn%06x", n),
		tools:      opts.Tools,
		sysctls:    map[string]string{},
	}
	k.KubeletRoot = filepath.Join(k.Dir, "kubelet")
	k.PodLogs = filepath.Join(k.Dir, "pods")
	k.Kubeconfig = filepath.Join(k.Dir, "admin.kubeconfig")
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, k.Stop(context.Background()))
		}
	}()
	for p := range kubeletTunables {
		b, err := os.ReadFile(filepath.Join("/proc/sys", p))
		if err != nil {
			return nil, fmt.Errorf("read host sysctl %s: %w", p, err)
		}
		k.sysctls[p] = strings.TrimSpace(string(b))
	}
	for _, d := range []string{k.Dir, k.KubeletRoot, k.PodLogs, filepath.Join(k.Dir, "varlog"), filepath.Join(k.Dir, "varlib"),
		filepath.Join(k.Dir, "sysctl"), filepath.Join(k.Dir, "kine"), filepath.Join(k.Dir, "flex"), filepath.Join(k.Dir, "volume-plugins")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := k.setupNodeNetwork(); err != nil {
		return nil, err
	}
	if k.pki, err = newPKI(filepath.Join(k.Dir, "pki")); err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	kinePort, apiPort, kubeletPort := ports[0], ports[1], ports[2]
	k.Server = fmt.Sprintf("https://127.0.0.1:%d", apiPort)

	// kine: etcd's API on loopback only, SQLite in Dir.
	if err := k.start("kine", k.tools.Kine, []string{
		"--listen-address", fmt.Sprintf("127.0.0.1:%d", kinePort),
		"--metrics-bind-address", "0",
		"--endpoint", "sqlite://" + filepath.Join(k.Dir, "kine", "state.db") + "?_journal=WAL&cache=shared&_busy_timeout=30000",
	}, []string{"SQLITE_TMPDIR=" + filepath.Join(k.Dir, "kine")}); err != nil {
		return nil, err
	}
	if err := waitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", kinePort), 30*time.Second, k.procByName("kine")); err != nil {
		return nil, err
	}

	// kube-apiserver
	apiCert, apiKey, err := k.pki.issue(certSpec{name: "apiserver", cn: "kube-apiserver", server: true,
		ips: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(k.NodeIP), net.ParseIP("10.96.0.1")},
		dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}})
	if err != nil {
		return nil, err
	}
	apiKubeletCert, apiKubeletKey, err := k.pki.issue(certSpec{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, client: true})
	if err != nil {
		return nil, err
	}
	saKey, saPub, err := k.pki.serviceAccountKey()
	if err != nil {
		return nil, err
	}
	if err := k.start("kube-apiserver", k.tools.APIServer, []string{
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort), "--advertise-address=" + k.NodeIP,
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", kinePort),
		"--client-ca-file=" + k.pki.CA(), "--tls-cert-file=" + apiCert, "--tls-private-key-file=" + apiKey,
		"--kubelet-client-certificate=" + apiKubeletCert, "--kubelet-client-key=" + apiKubeletKey,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saPub, "--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true", "--profiling=false",
		"--cert-dir=" + filepath.Join(k.Dir, "apiserver-certs"),
	}, nil); err != nil {
		return nil, err
	}
	admin, err := k.kubeconfig("admin", "kubernetes-admin", []string{"system:masters"})
	if err != nil {
		return nil, err
	}
	k.Kubeconfig = admin
	if err := k.waitAPIServer(ctx, 60*time.Second); err != nil {
		return nil, err
	}

	// Controller manager and scheduler: no serving port at all.
	cmConfig, err := k.kubeconfig("controller-manager", "system:kube-controller-manager", nil)
	if err != nil {
		return nil, err
	}
	if err := k.start("kube-controller-manager", k.tools.ControllerManager, []string{
		"--kubeconfig=" + cmConfig, "--secure-port=0", "--leader-elect=false",
		"--service-account-private-key-file=" + saKey, "--root-ca-file=" + k.pki.CA(),
		// Each controller runs as its own service account, bound to its
		// role (as kubeadm sets it up).
		"--use-service-account-credentials=true",
		"--flex-volume-plugin-dir=" + filepath.Join(k.Dir, "flex"),
		"--profiling=false",
	}, nil); err != nil {
		return nil, err
	}
	schedConfig, err := k.kubeconfig("scheduler", "system:kube-scheduler", nil)
	if err != nil {
		return nil, err
	}
	if err := k.start("kube-scheduler", k.tools.Scheduler, []string{
		"--kubeconfig=" + schedConfig, "--secure-port=0", "--leader-elect=false", "--profiling=false",
	}, nil); err != nil {
		return nil, err
	}

	// kubelet
	if err := k.startKubelet(kubeletPort, opts.NodeLabels); err != nil {
		return nil, err
	}
	if err := k.waitNodeReady(ctx, opts.StartTimeout); err != nil {
		return nil, err
	}
	return k, nil
}

// setupNodeNetwork creates the node's bridge holding NodeIP/32.
func (k *Kube) setupNodeNetwork() error {
	ip := ipTool()
	for _, args := range [][]string{
		{"link", "add", k.NodeBridge, "type", "bridge"},
		{"addr", "add", k.NodeIP + "/32", "dev", k.NodeBridge},
		{"link", "set", k.NodeBridge, "up"},
	} {
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("node network: ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// kubeconfig issues a client certificate for user in groups and writes
// <name>.kubeconfig for it; it returns the kubeconfig's path.
func (k *Kube) kubeconfig(name, user string, groups []string) (string, error) {
	cert, key, err := k.pki.issue(certSpec{name: name, cn: user, orgs: groups, client: true})
	if err != nil {
		return "", err
	}
	return k.kubeconfigFor(name, cert, key)
}

var kubeletConfigTemplate = template.Must(template.New("kubelet").Funcs(template.FuncMap{"q": strconv.Quote}).Parse(`# Written by integration/harness.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {{q .K.NodeIP}}
port: {{.Port}}
readOnlyPort: 0
healthzPort: 0
tlsCertFile: {{q .Cert}}
tlsPrivateKeyFile: {{q .Key}}
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: {{q .CA}}}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: {{q .Endpoint}}
imageServiceEndpoint: {{q .Endpoint}}
podLogsDir: {{q .K.PodLogs}}
volumePluginDir: {{q .VolumePlugins}}
# cgroup v1, no systemd here; the pods' cgroups live under the containerd
# instance's own parent, which its teardown removes.
cgroupDriver: cgroupfs
cgroupRoot: {{q .CgroupRoot}}
cgroupsPerQOS: true
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: false
makeIPTablesUtilChains: false
resolvConf: {{q .ResolvConf}}
clusterDomain: cluster.local
# The node's disk and memory belong to other work too: only evict when
# they are really gone, and never collect the imported test images.
evictionHard: {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
runtimeRequestTimeout: 4m
shutdownGracePeriod: 0s
# A changed ConfigMap or Secret reaches a pod's volume at its next sync
# (default every minute): the tests wait less.
syncFrequency: 10s
`))

// startKubelet writes the kubelet's configuration and starts it in its
// own mount namespace (see Kube).
func (k *Kube) startKubelet(port int, labels map[string]string) error {
	cert, key, err := k.pki.issue(certSpec{name: "kubelet", cn: "system:node:" + k.NodeName, orgs: []string{"system:nodes"},
		client: true, server: true, ips: []net.IP{net.ParseIP(k.NodeIP)}, dns: []string{k.NodeName}})
	if err != nil {
		return err
	}
	kc, err := k.kubeconfigFor("kubelet", cert, key)
	if err != nil {
		return err
	}
	resolv := filepath.Join(k.Dir, "resolv.conf")
	// The host's resolver is off-machine; pods resolve nothing.
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	var cfg bytes.Buffer
	if err := kubeletConfigTemplate.Execute(&cfg, map[string]any{
		"K": k, "Port": port, "Cert": cert, "Key": key, "CA": k.pki.CA(),
		"Endpoint": "unix://" + k.C.Socket, "VolumePlugins": filepath.Join(k.Dir, "volume-plugins"),
		"CgroupRoot": k.C.CgroupParent, "ResolvConf": resolv,
	}); err != nil {
		return fmt.Errorf("render kubelet config: %w", err)
	}
	cfgPath := filepath.Join(k.Dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write kubelet config: %w", err)
	}
	// The pods' cgroup parent must exist before the kubelet starts.
	if err := createCgroup(k.C.CgroupParent); err != nil {
		return err
	}
	for p, v := range kubeletTunables {
		f := filepath.Join(k.Dir, "sysctl", strings.ReplaceAll(p, "/", "."))
		if err := os.WriteFile(f, []byte(v+"\n"), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", f, err)
		}
	}
	// The root directory: a shared mount, before the namespace copies it.
	if err := syscall.Mount(k.KubeletRoot, k.KubeletRoot, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind kubelet root %s: %w", k.KubeletRoot, err)
	}
	if err := syscall.Mount("", k.KubeletRoot, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("make kubelet root %s shared: %w", k.KubeletRoot, err)
	}
	script := filepath.Join(k.Dir, "kubelet-ns.sh")
	if err := os.WriteFile(script, []byte(kubeletNSScript), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", script, err)
	}
	args := []string{"--mount", "--propagation", "unchanged", "--", "/bin/sh", script, k.Dir, k.KubeletRoot, k.tools.Kubelet,
		"--config=" + cfgPath, "--kubeconfig=" + kc, "--root-dir=" + k.KubeletRoot,
		"--cert-dir=" + filepath.Join(k.KubeletRoot, "pki"),
		"--hostname-override=" + k.NodeName, "--node-ip=" + k.NodeIP, "--v=1",
	}
	if len(labels) > 0 {
		var ls []string
		for l, v := range labels {
			ls = append(ls, l+"="+v)
		}
		args = append(args, "--node-labels="+strings.Join(ls, ","))
	}
	return k.start("kubelet", k.tools.Unshare, args, nil)
}

// kubeletNSScript runs in the kubelet's new mount namespace (a copy of the
// host's) as `sh kubelet-ns.sh DIR ROOT KUBELET ARGS...`: it stops every
// mount but the kubelet's root directory from propagating, binds DIR's
// stand-ins over the paths the kubelet would write outside it, and execs
// the kubelet (same PID: the harness stops it by PID).
const kubeletNSScript = `set -eu
dir=$1 root=$2
shift 2
awk '{print $5}' /proc/self/mountinfo | while read -r m; do
  case "$m" in "$root"|"$root"/*) ;; *) mount --make-private "$m" 2>/dev/null || true ;; esac
done
for f in "$dir"/sysctl/*; do
  mount --bind "$f" "/proc/sys/$(basename "$f" | tr . /)"
done
mount --bind "$dir/varlog" /var/log
mount --bind "$dir/varlib" /var/lib
exec "$@"
`

// kubeconfigFor writes <name>.kubeconfig for a client certificate.
func (k *Kube) kubeconfigFor(name, cert, key string) (string, error) {
	p := filepath.Join(k.Dir, name+".kubeconfig")
	data := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: contrast-test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: contrast-test
  context: {cluster: contrast-test, user: %s}
current-context: contrast-test
`, k.Server, k.pki.CA(), name, cert, key, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		return "", fmt.Errorf("write kubeconfig: %w", err)
	}
	return p, nil
}

// start launches a component with its output in <Dir>/<name>.log.
func (k *Kube) start(name, bin string, args, env []string) error {
	log := filepath.Join(k.Dir, name+".log")
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open %s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = k.Dir
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &kubeProc{name: name, cmd: cmd, log: log, logF: f, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	k.procs = append(k.procs, p)
	return nil
}

func (k *Kube) procByName(name string) *kubeProc {
	for _, p := range k.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// LogTail returns the last n lines of a component's log (kine,
// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet).
func (k *Kube) LogTail(name string, n int) string {
	return tailFile(filepath.Join(k.Dir, name+".log"), n)
}

// KubeletPID is the kubelet's process id.
func (k *Kube) KubeletPID() int {
	if p := k.procByName("kubelet"); p != nil && p.cmd.Process != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// exitedErr says whether p has exited, with its log's tail.
func (p *kubeProc) exitedErr() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited (%v); log %s ends:\n%s", p.name, p.err, p.log, tailFile(p.log, 30))
	default:
		return nil
	}
}

// anyExited reports the first component that is no longer running.
func (k *Kube) anyExited() error {
	for _, p := range k.procs {
		if err := p.exitedErr(); err != nil {
			return err
		}
	}
	return nil
}

func waitTCP(ctx context.Context, addr string, timeout time.Duration, p *kubeProc) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if p != nil {
			if e := p.exitedErr(); e != nil {
				return e
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %s: %w", addr, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitAPIServer waits until /readyz answers ok to the admin.
func (k *Kube) waitAPIServer(ctx context.Context, timeout time.Duration) error {
	cert, err := tls.LoadX509KeyPair(k.pki.path("admin.crt"), k.pki.path("admin.key"))
	if err != nil {
		return fmt.Errorf("load admin certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(k.pki.cert)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool,
	}}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if err := k.anyExited(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, k.Server+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("readyz: %s: %s", resp.Status, bytes.TrimSpace(body))
		} else {
			last = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver not ready after %s: %v; log ends:\n%s", timeout, last, k.LogTail("kube-apiserver", 30))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitNodeReady waits until the node reports Ready and the default
// namespace's service account exists (pods are refused before).
func (k *Kube) waitNodeReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		if err := k.anyExited(); err != nil {
			return err
		}
		out, err := k.Kubectl(ctx, "get", "node", k.NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err == nil && strings.TrimSpace(out) == "True" {
			if _, err := k.Kubectl(ctx, "get", "serviceaccount", "default", "-n", "default"); err == nil {
				return nil
			}
			last = "node Ready, but no default service account yet"
		} else if err != nil {
			last = err.Error()
		} else {
			last = "Ready=" + out
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not ready after %s (%s); kubelet log ends:\n%s", k.NodeName, timeout, last, k.LogTail("kubelet", 40))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Kubectl runs kubectl as cluster admin and returns its stdout; a failure
// is a *CmdError carrying stderr.
func (k *Kube) Kubectl(ctx context.Context, args ...string) (string, error) {
	return k.KubectlStdin(ctx, nil, args...)
}

// KubectlStdin is Kubectl with stdin.
func (k *Kube) KubectlStdin(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd := k.KubectlCmd(ctx, args...)
	cmd.Stdin = stdin
	out, _, err := runTool(cmd, "kubectl", args)
	return out, err
}

// KubectlCmd is a kubectl command as cluster admin, not started.
func (k *Kube) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, k.tools.Kubectl, append([]string{"--kubeconfig", k.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECACHEDIR="+filepath.Join(k.Dir, "kubectl-cache"), "HOME="+k.Dir)
	return cmd
}

// Apply runs kubectl apply -f - with manifest.
func (k *Kube) Apply(ctx context.Context, manifest string) (string, error) {
	return k.KubectlStdin(ctx, strings.NewReader(manifest), "apply", "-f", "-")
}

// Stop ends the cluster: the kubelet first (pods stay with containerd,
// whose own Stop removes them), then the control plane and kine, each by
// PID with SIGTERM and, after 10 s, SIGKILL; then the node bridge, the
// mounts under Dir and Dir itself go. It checks that no host sysctl the
// kubelet sets changed. Safe to call more than once.
func (k *Kube) Stop(ctx context.Context) error {
	var errs []error
	for i := len(k.procs) - 1; i >= 0; i-- {
		p := k.procs[i]
		if p.cmd.Process != nil {
			select {
			case <-p.exited:
			default:
				_ = p.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-p.exited:
				case <-time.After(10 * time.Second):
					_ = p.cmd.Process.Kill()
					<-p.exited
					errs = append(errs, fmt.Errorf("%s (pid %d) ignored SIGTERM for 10s and was killed", p.name, p.cmd.Process.Pid))
				}
			}
		}
		p.logF.Close()
	}
	k.procs = nil
	// The pods hold binds of the kubelet's volume mounts: they go first.
	k.C.removeAllPods(ctx)
	if err := unmountUnder(k.Dir); err != nil {
		errs = append(errs, err)
	}
	if _, err := net.InterfaceByName(k.NodeBridge); err == nil {
		if out, err := exec.Command(ipTool(), "link", "delete", k.NodeBridge).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("delete node bridge %s: %w: %s", k.NodeBridge, err, out))
		}
	}
	for p, was := range k.sysctls {
		b, err := os.ReadFile(filepath.Join("/proc/sys", p))
		if err != nil {
			errs = append(errs, fmt.Errorf("read host sysctl %s: %w", p, err))
		} else if now := strings.TrimSpace(string(b)); now != was {
			errs = append(errs, fmt.Errorf("host sysctl %s changed from %s to %s while the cluster ran", p, was, now))
		}
	}
	if err := os.RemoveAll(k.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
	}
	return errors.Join(errs...)
}

// freePorts returns n distinct TCP ports free on loopback right now.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// StartKubectlSession starts kubectl with args and pipes for stdin,
// stdout and stderr (kubectl logs -f, exec -i, attach -i, port-forward).
func (k *Kube) StartKubectlSession(ctx context.Context, args ...string) (*Session, error) {
	return startPipeSession(k.KubectlCmd(ctx, args...), args)
}

// StartKubectlTerminal starts kubectl with args on a new pseudo-terminal
// of rows x cols (kubectl exec -it, attach -it).
func (k *Kube) StartKubectlTerminal(ctx context.Context, rows, cols uint16, args ...string) (*Session, error) {
	return startTerminalSession(k.KubectlCmd(ctx, args...), rows, cols, args)
}
