package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// Handler is a CRI runtime handler served by the contrast shim.
type Handler struct {
	// Name is the handler name pods ask for (crictl runp --runtime NAME).
	Name string
	// Shim is the absolute path of the shim binary (runtime_path).
	Shim string
	// ConfigPath is the shim's TOML configuration, passed as the
	// handler's options.ConfigPath. Empty: Start picks a path in the
	// instance directory (see Containerd.Handlers); the file only has to
	// exist when a pod starts, so it can be written after Start.
	ConfigPath string
}

// Version is a containerd release line the harness can run.
type Version string

// The containerd versions the runtime supports: each lifecycle test runs
// against both.
const (
	Containerd24 Version = "2.4"
	Containerd17 Version = "1.7"
)

// Versions lists the supported containerd versions, newest first.
var Versions = []Version{Containerd24, Containerd17}

// Options configures a private containerd instance.
type Options struct {
	Tools Tools
	// Version picks the containerd binary and configuration dialect
	// (default Containerd24).
	Version Version
	// Handlers are added beside the runc baseline handler "runc".
	Handlers []Handler
	// LogLevel of containerd (default debug: the log is the first thing to
	// read when a test fails, and it also carries the shims' logs).
	LogLevel string
	// StartTimeout bounds the wait for CRI to answer (default 30s).
	StartTimeout time.Duration
}

// Containerd is a running private containerd instance. Every path it
// uses lies under Dir, so it runs beside the host's and other tests'.
type Containerd struct {
	Version  Version
	Dir      string
	Root     string
	State    string
	Socket   string
	RuncRoot string
	// SocketDir holds the shim sockets (short: at most 38 characters).
	// containerd 1.7 cannot move them: its shims listen in
	// ShimSocketRoot under names hashed from Socket, namespace and id.
	SocketDir  string
	CNIConf    string
	ConfigToml string
	Log        string
	// ShimState is where tests point the contrast shim's state_dir: Dir
	// itself, see makeInstanceDir.
	ShimState string
	// PodLogs holds the pods' CRI log directories.
	PodLogs string
	// CgroupParent is the cgroup (in every hierarchy) under which this
	// instance's pods get theirs, so teardown can remove them all.
	CgroupParent string
	// Handlers are the contrast handlers, with their config paths.
	Handlers []Handler
	// Bridge and Network name this instance's CNI bridge and network.
	Bridge  string
	Network string
	Subnet  string
	// Gateway is the bridge's address in Subnet: the host's side of the
	// pods' network and their default route.
	Gateway string

	tools        Tools
	startTimeout time.Duration
	created      time.Time
	cmd          *exec.Cmd
	logF         *os.File
	exited       chan struct{}
	err          error // why containerd exited; read after exited is closed
}

// ShimSocketRoot is where containerd 1.7 and the shims it starts put shim
// sockets (/run/containerd/s, fixed at build time), shared by every 1.7
// instance on the host.
const ShimSocketRoot = "/run/containerd/s"

// ShimSocket is the socket path containerd 1.7's shim helpers derive for a
// task id in namespace ns of this instance (empty for 2.4, whose sockets
// lie in SocketDir).
func (c *Containerd) ShimSocket(ns, id string) string {
	if c.Version != Containerd17 {
		return ""
	}
	sum := sha256.Sum256([]byte(filepath.Join(c.Socket, ns, id)))
	return filepath.Join(ShimSocketRoot, hex.EncodeToString(sum[:]))
}

// Tools returns the tools the instance was started with.
func (c *Containerd) Tools() Tools { return c.tools }

// Start writes a configuration and starts containerd, and waits until its
// CRI service answers. On error nothing is left running and Dir is removed.
func Start(ctx context.Context, opts Options) (_ *Containerd, retErr error) {
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.Version == "" {
		opts.Version = Containerd24
	}
	if opts.Version != Containerd24 && opts.Version != Containerd17 {
		return nil, fmt.Errorf("containerd version %q: want %s or %s", opts.Version, Containerd24, Containerd17)
	}
	dir, n, err := makeInstanceDir()
	if err != nil {
		return nil, err
	}
	c := &Containerd{
		Version:      opts.Version,
		Dir:          dir,
		Root:         filepath.Join(dir, "root"),
		State:        filepath.Join(dir, "state"),
		Socket:       filepath.Join(dir, "c.sock"),
		RuncRoot:     filepath.Join(dir, "runc"),
		SocketDir:    filepath.Join(dir, "sh"),
		CNIConf:      filepath.Join(dir, "cni", "net.d"),
		ConfigToml:   filepath.Join(dir, "containerd.toml"),
		Log:          filepath.Join(dir, "containerd.log"),
		ShimState:    dir,
		PodLogs:      filepath.Join(dir, "logs"),
		CgroupParent: "/" + filepath.Base(dir),
		Bridge:       fmt.Sprintf("cb%06x", n),
		Network:      fmt.Sprintf("c-%06x", n),
		// 10.200.0.0/13 split into /24s; the bridge is the pods' gateway
		// to this host only (no masquerading), so a clash with another
		// instance's subnet stays a local matter.
		Subnet:       fmt.Sprintf("10.%d.%d.0/24", 200+int(n>>8)%8, n%256),
		Gateway:      fmt.Sprintf("10.%d.%d.1", 200+int(n>>8)%8, n%256),
		tools:        opts.Tools,
		startTimeout: opts.StartTimeout,
		created:      time.Now(),
	}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, c.Stop(context.Background()))
		}
	}()
	if len(c.SocketDir) > 38 {
		return nil, fmt.Errorf("shim socket dir %s is longer than containerd's limit of 38 characters", c.SocketDir)
	}
	for _, d := range []string{c.Root, c.State, c.RuncRoot, c.SocketDir, c.CNIConf, c.ShimState, c.PodLogs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := c.linkShims(opts); err != nil {
		return nil, err
	}
	for _, h := range opts.Handlers {
		if h.ConfigPath == "" {
			h.ConfigPath = filepath.Join(dir, "runtime-"+h.Name+".toml")
		}
		c.Handlers = append(c.Handlers, h)
	}
	if err := c.writeConfig(opts); err != nil {
		return nil, err
	}
	if err := c.launch(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// RemoveStaleShimSockets removes the shim socket files of this instance
// that nothing listens on any more (shims that died without cleaning up)
// and returns their paths. For 2.4 those are in SocketDir; for 1.7 in the
// shared ShimSocketRoot, where names are hashes, so it takes those that
// appeared during the instance's life.
func (c *Containerd) RemoveStaleShimSockets() ([]string, error) {
	dir := c.SocketDir
	if c.Version == Containerd17 {
		dir = ShimSocketRoot
	}
	bound, err := unixSockets(dir)
	if err != nil {
		return nil, err
	}
	var stale []string
	for _, p := range listDir(dir) {
		st, err := os.Lstat(p)
		if err != nil || st.Mode()&os.ModeSocket == 0 || bound[p] || st.ModTime().Before(c.created) {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return stale, fmt.Errorf("remove stale shim socket: %w", err)
		}
		stale = append(stale, p)
	}
	return stale, nil
}

// removeStaleShimSockets is RemoveStaleShimSockets for teardown: for a
// 1.7 instance (2.4's lie in Dir, which goes anyway), what it had to
// remove is an error.
func (c *Containerd) removeStaleShimSockets() error {
	if c.Version != Containerd17 {
		return nil
	}
	stale, err := c.RemoveStaleShimSockets()
	if err != nil {
		return err
	}
	if len(stale) > 0 {
		return fmt.Errorf("removed shim sockets left in %s: %s", ShimSocketRoot, strings.Join(stale, ", "))
	}
	return nil
}

// linkShims fills the instance's bin directory, which comes first on
// containerd's PATH, as a node's installer would fill /usr/local/bin:
// containerd resolves a shim by name whenever the configured
// runtime_path is not at hand (2.4 reloading running shims after a
// restart, for one), and a 1.7 instance needs 1.7's runc shim.
func (c *Containerd) linkShims(opts Options) error {
	bin := filepath.Join(c.Dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", bin, err)
	}
	links := map[string]string{}
	if c.Version == Containerd17 {
		links["containerd-shim-runc-v2"] = opts.Tools.RuncShim17
	}
	for _, h := range opts.Handlers {
		links[filepath.Base(h.Shim)] = h.Shim
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(bin, name)); err != nil {
			return fmt.Errorf("link shim %s into %s: %w", name, bin, err)
		}
	}
	return nil
}

// binary is the containerd executable of the instance's version.
func (c *Containerd) binary() string {
	if c.Version == Containerd17 {
		return c.tools.Containerd17
	}
	return c.tools.Containerd
}

// launch starts the containerd process (appending to its log) and waits
// until CRI answers.
func (c *Containerd) launch(ctx context.Context) error {
	logF, err := os.OpenFile(c.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open containerd log: %w", err)
	}
	c.logF = logF
	cmd := exec.Command(c.binary(), "--config", c.ConfigToml)
	cmd.Stdout, cmd.Stderr = logF, logF
	// Own process group: a Ctrl-C at the demo's terminal reaches the
	// demo, which then tears containerd down in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// containerd looks shims up on PATH: see linkShims.
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(c.Dir, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd %s: %w", c.binary(), err)
	}
	c.cmd = cmd
	exited := make(chan struct{})
	c.exited = exited
	go func() {
		c.err = cmd.Wait()
		close(exited)
	}()
	return c.waitReady(ctx, c.startTimeout)
}

// Restart stops containerd with SIGTERM, as a service manager would, and
// starts it again with the same configuration; shims and pods keep
// running meanwhile, and containerd must find them again.
func (c *Containerd) Restart(ctx context.Context) error {
	if err := c.terminate(); err != nil {
		return fmt.Errorf("restart containerd: %w", err)
	}
	if err := c.launch(ctx); err != nil {
		return fmt.Errorf("restart containerd: %w", err)
	}
	return nil
}

// terminate ends the containerd process with SIGTERM (SIGKILL after 10s)
// and closes its log; shims are left alone.
func (c *Containerd) terminate() error {
	if c.cmd == nil || c.cmd.Process == nil {
		return nil
	}
	var err error
	select {
	case <-c.exited:
	default:
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.exited
			err = fmt.Errorf("containerd (pid %d) ignored SIGTERM for 10s and was killed", c.cmd.Process.Pid)
		}
	}
	if c.logF != nil {
		c.logF.Close()
		c.logF = nil
	}
	return err
}

func (c *Containerd) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	cri := c.CRI()
	var last error
	for {
		select {
		case <-c.exited:
			return fmt.Errorf("containerd exited during start-up (%v); log %s ends:\n%s", c.err, c.Log, c.LogTail(30))
		case <-ctx.Done():
			return fmt.Errorf("wait for containerd: %w", ctx.Err())
		default:
		}
		if conn, err := net.Dial("unix", c.Socket); err == nil {
			conn.Close()
			// The socket answers before CRI has loaded its runtimes and
			// CNI; `crictl info` tells when both are ready.
			if ready, err := cri.Ready(ctx); err == nil && ready {
				return nil
			} else if err != nil {
				last = err
			} else {
				last = errors.New("CRI reports runtime or network not ready")
			}
		} else {
			last = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd at %s not ready after %s: %v; log %s ends:\n%s", c.Socket, timeout, last, c.Log, c.LogTail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// PID is containerd's process id.
func (c *Containerd) PID() int {
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// CRI returns a crictl client for this instance.
func (c *Containerd) CRI() *CRI {
	return &CRI{
		Bin: c.tools.Crictl, Endpoint: "unix://" + c.Socket, ConfigDir: filepath.Join(c.Dir, "cri"),
		LogDir: c.PodLogs, CgroupParent: c.CgroupParent, KubeletRoot: c.KubeletRoot(),
	}
}

// KubeletRoot is where the harness keeps what the kubelet would keep under
// its --root-dir (pods/<uid>/etc-hosts, containers/<name>/<id>): the
// kubeletRootDir policies for this instance are generated with.
func (c *Containerd) KubeletRoot() string { return filepath.Join(c.Dir, "kubelet") }

// Ctr runs ctr against this instance in CRI's namespace, k8s.io, and
// returns its stdout.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	return c.CtrIn(ctx, "k8s.io", args...)
}

// CollectGarbage has containerd collect garbage now, synchronously, by
// removing a lease of its own with --sync. containerd 1.7 can miss a
// deletion that happens while a collection runs and then removes the
// snapshot's directory only at the next change; a collection removes only
// what nothing references, so it hides no leak.
func (c *Containerd) CollectGarbage(ctx context.Context) error {
	suffix, err := randomHex(4)
	if err != nil {
		return err
	}
	id := "contrast-test-gc-" + suffix
	if _, err := c.Ctr(ctx, "leases", "create", "--id", id); err != nil {
		return fmt.Errorf("collect garbage: %w", err)
	}
	if _, err := c.Ctr(ctx, "leases", "delete", "--sync", id); err != nil {
		return fmt.Errorf("collect garbage: %w", err)
	}
	return nil
}

// CtrIn runs ctr in a namespace and returns its stdout; a failure is a
// *CmdError.
func (c *Containerd) CtrIn(ctx context.Context, namespace string, args ...string) (string, error) {
	full := append([]string{"--address", c.Socket, "--namespace", namespace}, args...)
	out, _, err := runTool(exec.CommandContext(ctx, c.tools.Ctr, full...), "ctr", args)
	return out, err
}

// ImportImages builds the test images (busybox and pause) into dir, unless
// they are there already, and imports them.
func (c *Containerd) ImportImages(ctx context.Context, dir string) error {
	paths, err := WriteTestImages(dir, c.tools.Busybox)
	if err != nil {
		return err
	}
	for _, p := range paths {
		if _, err := c.Ctr(ctx, "images", "import", "--local", p); err != nil {
			return fmt.Errorf("import %s: %w", p, err)
		}
	}
	return nil
}

// LogTail returns the last n lines of containerd's log.
func (c *Containerd) LogTail(n int) string {
	b, err := os.ReadFile(c.Log)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", c.Log, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// LogGrep returns the log lines that contain any of needles.
func (c *Containerd) LogGrep(needles ...string) string {
	b, err := os.ReadFile(c.Log)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", c.Log, err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, n := range needles {
			if strings.Contains(l, n) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// InstanceProcesses are the processes that belong to this instance other
// than containerd itself: those whose command line names Dir (shims name
// the socket, VM monitors their state under ShimState) and their
// descendants (container processes, device backends).
func (c *Containerd) InstanceProcesses() ([]Process, error) {
	ps, err := Processes()
	if err != nil {
		return nil, err
	}
	cpid := c.PID()
	return matching(ps, []string{c.Dir}, func(p Process) bool {
		return p.PID == cpid || strings.HasPrefix(p.Cmdline, c.tools.Crictl) || strings.HasPrefix(p.Cmdline, c.tools.Ctr)
	}), nil
}

// Stop tears the instance down whatever state it is in: pods are stopped
// and removed through CRI (so shims shut their VMs down in order),
// containerd is ended, then every process, mount and file of the instance
// that is still there is killed, unmounted or removed. The error says what
// had to be forced. Safe to call more than once.
func (c *Containerd) Stop(ctx context.Context) error {
	var errs []error
	if c.cmd != nil && c.cmd.Process != nil {
		select {
		case <-c.exited:
		default:
			c.removeAllPods(ctx)
		}
	}
	if err := c.terminate(); err != nil {
		errs = append(errs, err)
	}
	if ps, err := c.InstanceProcesses(); err != nil {
		errs = append(errs, err)
	} else if len(ps) > 0 {
		errs = append(errs, fmt.Errorf("killed processes left by containerd instance %s:\n%s", c.Dir, Leftovers{Processes: ps}))
		if alive := killProcesses(ps, 10*time.Second); len(alive) > 0 {
			errs = append(errs, fmt.Errorf("processes survive SIGKILL: %v", alive))
		}
	}
	if err := unmountUnder(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := c.removeStaleShimSockets(); err != nil {
		errs = append(errs, err)
	}
	if c.CgroupParent != "" {
		if err := removeCgroups(c.CgroupParent); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Network != "" {
		if err := removeCNICache(c.Network); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Bridge != "" {
		// The CNI bridge plugin creates the bridge and never deletes it.
		if _, err := net.InterfaceByName(c.Bridge); err == nil {
			if out, err := exec.Command(ipTool(), "link", "delete", c.Bridge).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("delete bridge %s: %w: %s", c.Bridge, err, out))
			}
		}
	}
	if c.Dir != "" {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove containerd instance directory: %w", err))
		}
	}
	return errors.Join(errs...)
}

// removeAllPods stops and removes every pod, best effort: what fails here
// is forced away by Stop afterwards.
func (c *Containerd) removeAllPods(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cri := c.CRI()
	ids, err := cri.PodIDs(ctx)
	if err != nil {
		return
	}
	for _, id := range ids {
		_ = cri.StopPod(ctx, id)
		_ = cri.RemovePod(ctx, id)
	}
}

var configTemplate = template.Must(template.New("containerd").Funcs(template.FuncMap{"q": strconv.Quote}).Parse(`# Written by integration/harness for a private containerd instance.
version = 3
root = {{q .C.Root}}
state = {{q .C.State}}
# No drop-ins from /etc/containerd.
imports = []

[cgroup]
  path = ""

[grpc]
  address = {{q .C.Socket}}
[ttrpc]
  address = {{q (print .C.Socket ".ttrpc")}}
[debug]
  level = {{q .LogLevel}}

[plugins]
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = {{q .C.SocketDir}}

  # Collect garbage (removed snapshots) right after each deletion: by
  # default containerd paces collection to 2% of the time, which on a busy
  # machine delays the removal of a pod's snapshots by many seconds.
  [plugins.'io.containerd.gc.v1.scheduler']
    deletion_threshold = 1
    pause_threshold = 0.5

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = {{q .Pause}}

  [plugins.'io.containerd.cri.v1.runtime']
    cdi_spec_dirs = []
    enable_criu = false
    # root here lacks CAP_SYS_RESOURCE: a sandbox oom_score_adj of -998 fails.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        sandboxer = 'podsandbox'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = {{q .Runc}}
          Root = {{q .C.RuncRoot}}
          SystemdCgroup = false
{{- range .Handlers}}
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.{{q .Name}}]
        runtime_type = 'io.containerd.contrast.v2'
        runtime_path = {{q .Shim}}
        sandboxer = 'podsandbox'
        snapshotter = 'overlayfs'
        pod_annotations = ['io.katacontainers.*', 'io.contrast.*']
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.{{q .Name}}.options]
          ConfigPath = {{q .ConfigPath}}
{{- end}}
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [{{q .CNIBin}}]
      conf_dir = {{q .C.CNIConf}}
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.internal.v1.opt']
    path = {{q (print .C.Dir "/opt")}}
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = {{q (print .C.Dir "/image-verifier")}}
`))

// config17Template is the same instance in containerd 1.7's dialect
// (config version 2, every CRI setting under io.containerd.grpc.v1.cri).
var config17Template = template.Must(template.New("containerd17").Funcs(template.FuncMap{"q": strconv.Quote}).Parse(`# Written by integration/harness for a private containerd 1.7 instance.
version = 2
root = {{q .C.Root}}
state = {{q .C.State}}
# No drop-ins from /etc/containerd.
imports = []

[cgroup]
  path = ""

[grpc]
  address = {{q .C.Socket}}
[ttrpc]
  address = {{q (print .C.Socket ".ttrpc")}}
[debug]
  level = {{q .LogLevel}}

[plugins]
  # Prompt garbage collection: see the 2.4 configuration.
  [plugins."io.containerd.gc.v1.scheduler"]
    deletion_threshold = 1
    pause_threshold = 0.5

  [plugins."io.containerd.grpc.v1.cri"]
    # Present after import, so CRI never pulls.
    sandbox_image = {{q .Pause}}
    enable_cdi = false
    cdi_spec_dirs = []
    # root here lacks CAP_SYS_RESOURCE: a sandbox oom_score_adj of -998 fails.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        sandbox_mode = "podsandbox"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = {{q .Runc}}
          Root = {{q .C.RuncRoot}}
          SystemdCgroup = false
{{- range .Handlers}}
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{{q .Name}}]
        runtime_type = "io.containerd.contrast.v2"
        runtime_path = {{q .Shim}}
        sandbox_mode = "podsandbox"
        snapshotter = "overlayfs"
        pod_annotations = ["io.katacontainers.*", "io.contrast.*"]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{{q .Name}}.options]
          ConfigPath = {{q .ConfigPath}}
{{- end}}
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = {{q .CNIBin}}
      conf_dir = {{q .C.CNIConf}}
      max_conf_num = 1

  [plugins."io.containerd.nri.v1.nri"]
    disable = true
  [plugins."io.containerd.internal.v1.opt"]
    path = {{q (print .C.Dir "/opt")}}
`))

var cniTemplate = template.Must(template.New("cni").Funcs(template.FuncMap{"q": strconv.Quote}).Parse(`{
  "cniVersion": "1.0.0",
  "name": {{q .C.Network}},
  "plugins": [
    {
      "type": "bridge",
      "bridge": {{q .C.Bridge}},
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": {{q .C.Subnet}}, "gateway": {{q .C.Gateway}}}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": {{q (print .C.Dir "/cni/ipam")}}
      }
    }
  ]
}
`))

func (c *Containerd) writeConfig(opts Options) error {
	for _, h := range c.Handlers {
		if h.Name == "" || h.Name == "runc" || !filepath.IsAbs(h.Shim) || !filepath.IsAbs(h.ConfigPath) {
			return fmt.Errorf("runtime handler %+v: want a name other than runc and absolute shim and config paths", h)
		}
	}
	data := map[string]any{
		"C": c, "LogLevel": opts.LogLevel, "Pause": PauseImage, "Runc": opts.Tools.Runc,
		"Handlers": c.Handlers, "CNIBin": opts.Tools.CNIBinDir,
	}
	var cfg, cni bytes.Buffer
	tmpl := configTemplate
	if c.Version == Containerd17 {
		tmpl = config17Template
	}
	if err := tmpl.Execute(&cfg, data); err != nil {
		return fmt.Errorf("render containerd config: %w", err)
	}
	if err := cniTemplate.Execute(&cni, data); err != nil {
		return fmt.Errorf("render CNI config: %w", err)
	}
	if err := os.WriteFile(c.ConfigToml, cfg.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write containerd config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.CNIConf, "10-"+c.Network+".conflist"), cni.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write CNI config: %w", err)
	}
	return nil
}

// makeInstanceDir creates /tmp/c<6 hex digits>. It is short on purpose:
// containerd's socket_dir (at most 38 characters) and the contrast shim's
// socket_dir (ShimSocketDir) live in it, and a unix socket's path must fit
// in 108 bytes. The instance directory also serves as the shim's
// state_dir. The random number also names the instance's bridge, network
// and cgroup parent.
func makeInstanceDir() (string, uint32, error) {
	for range 10 {
		var rnd [4]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return "", 0, fmt.Errorf("random instance name: %w", err)
		}
		n := binary.BigEndian.Uint32(rnd[:]) & 0xffffff
		dir := fmt.Sprintf("/tmp/c%06x", n)
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			return dir, n, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", 0, fmt.Errorf("create containerd instance directory: %w", err)
		}
	}
	return "", 0, errors.New("create containerd instance directory: no free name in /tmp/c*")
}

// HandlerConfig returns the shim configuration path of a handler.
func (c *Containerd) HandlerConfig(name string) (string, error) {
	for _, h := range c.Handlers {
		if h.Name == name {
			return h.ConfigPath, nil
		}
	}
	return "", fmt.Errorf("containerd instance %s has no runtime handler %q", c.Dir, name)
}

// ipTool finds iproute2's ip, which lives in sbin, off some users' PATH.
func ipTool() string {
	if p, err := exec.LookPath("ip"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "ip"
}

// removeCNICache removes the result cache entries of a network that
// containerd did not tear down (it crashed or was killed): libcni keeps
// them outside the instance directory, as <network>-<sandbox id>-<if> and,
// for containerd's loopback network, cni-loopback-<sandbox id>-lo.
func removeCNICache(network string) error {
	var errs []error
	for _, p := range listDir(cniCacheDir) {
		rest, ok := strings.CutPrefix(filepath.Base(p), network+"-")
		if !ok {
			continue
		}
		if id, _, ok := strings.Cut(rest, "-"); ok && id != "" {
			lo := filepath.Join(cniCacheDir, "cni-loopback-"+id+"-lo")
			if err := os.Remove(lo); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove CNI cache of network %s: %w", network, err)
	}
	return nil
}
