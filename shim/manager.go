package shim

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	cdshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
)

// RuntimeName is what containerd knows this runtime as.
const RuntimeName = "io.containerd.contrast.v2"

// Annotations CRI sets on every container; the sandbox id groups a pod's
// containers into one shim process and one VM.
const (
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	annotationContainerType = "io.kubernetes.cri.container-type"
	containerTypeSandbox    = "sandbox"
)

// startFlags are the flags containerd passes to `start`, in both dialects.
type startFlags struct {
	namespace, id, address, publishBinary, socket, bundle string
	debug                                                 bool
	action                                                string
}

func parseStartFlags(args []string) (startFlags, error) {
	var f startFlags
	fs := flag.NewFlagSet("containerd-shim-contrast-v2", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.namespace, "namespace", "", "")
	fs.StringVar(&f.id, "id", "", "")
	fs.StringVar(&f.address, "address", "", "")
	fs.StringVar(&f.publishBinary, "publish-binary", "", "")
	fs.StringVar(&f.socket, "socket", "", "")
	fs.StringVar(&f.bundle, "bundle", "", "")
	fs.BoolVar(&f.debug, "debug", false, "")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	f.action = fs.Arg(0)
	return f, nil
}

// IsStart tells whether the command line asks for the `start` action.
func IsStart(args []string) bool {
	f, err := parseStartFlags(args)
	return err == nil && f.action == "start"
}

// startParams is what `start` needs, whichever dialect it came in.
type startParams struct {
	ID, Namespace             string
	GRPCAddress, TTRPCAddress string
	SocketDir                 string
	Debug                     bool
}

// RunStart serves `start` for both bootstrap dialects: containerd >= 2.3
// writes a protobuf BootstrapParams on stdin and reads a BootstrapResult;
// containerd 1.7 passes flags and the TTRPC_ADDRESS env, writes runtime options
// on stdin, and reads a bare socket address.
func RunStart(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	f, err := parseStartFlags(args)
	if err != nil {
		return fmt.Errorf("parse start flags: %w", err)
	}
	input, err := io.ReadAll(io.LimitReader(stdin, 10<<20))
	if err != nil {
		return fmt.Errorf("read start input: %w", err)
	}
	params, modern := parseBootstrap(input, f)
	ctx = namespaces.WithNamespace(ctx, params.Namespace)
	address, err := startShim(ctx, params)
	if err != nil {
		return err
	}
	if !modern {
		// containerd 1.7 finds a running shim after its own restart through
		// the bundle's address file, which the shim writes.
		if err := writeAddressFile(address); err != nil {
			return err
		}
		_, err = io.WriteString(stdout, address)
		return err
	}
	out, err := proto.Marshal(&bootapi.BootstrapResult{Version: 3, Address: address, Protocol: "ttrpc"})
	if err != nil {
		return fmt.Errorf("marshal bootstrap result: %w", err)
	}
	_, err = stdout.Write(out)
	return err
}

// parseBootstrap reads the modern BootstrapParams when stdin holds one for
// this very instance, and falls back to the legacy flags and environment.
// Legacy runtime options can parse as BootstrapParams, hence the identity check.
func parseBootstrap(input []byte, f startFlags) (startParams, bool) {
	var bp bootapi.BootstrapParams
	if len(input) > 0 && proto.Unmarshal(input, &bp) == nil && bp.InstanceID == f.id && bp.Namespace == f.namespace {
		return startParams{
			ID:           bp.InstanceID,
			Namespace:    bp.Namespace,
			GRPCAddress:  bp.ContainerdGrpcAddress,
			TTRPCAddress: bp.ContainerdTtrpcAddress,
			SocketDir:    bp.GetSocketDir(),
			Debug:        bp.LogLevel <= bootapi.LogLevel_LOG_LEVEL_DEBUG,
		}, true
	}
	return startParams{
		ID:           f.id,
		Namespace:    f.namespace,
		GRPCAddress:  f.address,
		TTRPCAddress: os.Getenv("TTRPC_ADDRESS"),
		Debug:        f.debug,
	}, false
}

// startShim returns the address of the shim serving the pod of params.ID,
// starting a new shim process when the pod has none yet.
func startShim(ctx context.Context, p startParams) (_ string, retErr error) {
	if p.Namespace == "" || p.ID == "" {
		return "", errors.New("start: namespace and id are required")
	}
	bundle, err := os.Getwd()
	if err != nil {
		return "", err
	}
	group, err := podGroup(filepath.Join(bundle, "config.json"), p.ID)
	if err != nil {
		return "", err
	}
	socketDir := p.SocketDir
	if socketDir == "" {
		socketDir = "/run/containerd/s"
	} else if err := linkSocketDir(bundle, socketDir); err != nil {
		return "", err
	}
	address, err := cdshim.CreateSocketAddress(ctx, socketDir, p.GRPCAddress, group, false)
	if err != nil {
		return "", fmt.Errorf("socket address for pod %s: %w", group, err)
	}
	listener, err := cdshim.NewSocket(address)
	if err != nil {
		if !cdshim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket for pod %s: %w", group, err)
		}
		if cdshim.CanConnect(address) {
			return address, nil // the pod's shim already runs
		}
		if err := cdshim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("remove stale shim socket: %w", err)
		}
		if listener, err = cdshim.NewSocket(address); err != nil {
			return "", fmt.Errorf("create shim socket for pod %s: %w", group, err)
		}
	}
	defer func() {
		if retErr != nil {
			_ = cdshim.RemoveSocket(address)
		}
	}()
	socketFile, err := listener.File()
	// The server process listens on the socket from here on: closing our
	// listener must not unlink the socket file.
	listener.SetUnlinkOnClose(false)
	listener.Close()
	if err != nil {
		return "", fmt.Errorf("shim socket file: %w", err)
	}
	defer socketFile.Close()

	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	args := []string{"-namespace", p.Namespace, "-id", p.ID, "-address", p.GRPCAddress}
	if p.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = bundle
	cmd.Env = append(os.Environ(), "TTRPC_ADDRESS="+p.TTRPCAddress, "GOMAXPROCS=2")
	cmd.ExtraFiles = []*os.File{socketFile} // fd 3, where pkg/shim's server listens
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start shim for pod %s: %w", group, err)
	}
	go cmd.Wait() //nolint:errcheck // the server outlives us; reaping it is all that is left
	if err := cdshim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		log.G(ctx).WithError(err).Debug("cannot adjust shim OOM score")
	}
	return address, nil
}

// writeAddressFile records the shim address in the bundle (the working
// directory of `start`), atomically.
func writeAddressFile(address string) error {
	tmp := "address.tmp"
	if err := os.WriteFile(tmp, []byte(address), 0o600); err != nil {
		return fmt.Errorf("write shim address: %w", err)
	}
	if err := os.Rename(tmp, "address"); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write shim address: %w", err)
	}
	return nil
}

// socketDirLink is the symlink in the bundle through which containerd's shim
// library finds a non-default socket directory when the server shuts down
// and removes its socket.
const socketDirLink = "s"

func linkSocketDir(bundle, dir string) error {
	link := filepath.Join(bundle, socketDirLink)
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace socket dir link: %w", err)
	}
	if err := os.Symlink(dir, link); err != nil {
		return fmt.Errorf("link socket dir: %w", err)
	}
	return nil
}

// podGroup returns the id of the pod a task belongs to: the CRI sandbox id,
// or the task's own id outside Kubernetes.
func podGroup(configPath, id string) (string, error) {
	spec, err := readBundleAnnotations(configPath)
	if err != nil {
		return "", err
	}
	if g := spec[annotationSandboxID]; g != "" {
		return g, nil
	}
	return id, nil
}

func readBundleAnnotations(configPath string) (map[string]string, error) {
	data, err := os.ReadFile(configPath)
	if err != nil {
		return nil, fmt.Errorf("read bundle: %w", err)
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("bundle %s: malformed config.json: %w", configPath, err)
	}
	return spec.Annotations, nil
}

// manager implements pkg/shim's Shim for the actions pkg/shim runs for us:
// -info, delete (cleanup after a shim died) and serving.
type manager struct {
	// newHypervisor finds a dead shim's VM again, for `delete`.
	newHypervisor HypervisorFactory
}

// NewManager returns the shim manager.
func NewManager(newHypervisor HypervisorFactory) cdshim.Shim {
	return manager{newHypervisor: newHypervisor}
}

func (manager) Name() string { return RuntimeName }

func (manager) Start(ctx context.Context, bp *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	address, err := startShim(ctx, startParams{
		ID: bp.InstanceID, Namespace: bp.Namespace,
		GRPCAddress: bp.ContainerdGrpcAddress, TTRPCAddress: bp.ContainerdTtrpcAddress,
		SocketDir: bp.GetSocketDir(),
	})
	if err != nil {
		return nil, err
	}
	return &bootapi.BootstrapResult{Version: 3, Address: address, Protocol: "ttrpc"}, nil
}

// Stop runs for `delete`: containerd calls it when the shim is gone (crashed
// or killed). It kills the pod's VM and removes the pod's state, using what
// the bundle records, and reports the task as killed.
func (m manager) Stop(ctx context.Context, id string) (cdshim.StopStatus, error) {
	bundle, err := os.Getwd()
	if err != nil {
		return cdshim.StopStatus{}, err
	}
	if err := cleanupBundle(ctx, bundle, m.newHypervisor); err != nil {
		return cdshim.StopStatus{}, fmt.Errorf("clean up task %s: %w", id, err)
	}
	removeDeadShimSocket(ctx, bundle, id)
	return cdshim.StopStatus{ExitStatus: 128 + int(syscall.SIGKILL), ExitedAt: time.Now()}, nil
}

// removeDeadShimSocket removes the pod's shim socket when no shim answers on
// it any more (a killed shim cannot remove it itself).
func removeDeadShimSocket(ctx context.Context, bundle, id string) {
	f, err := parseStartFlags(os.Args[1:])
	if err != nil {
		return
	}
	group, err := podGroup(filepath.Join(bundle, "config.json"), id)
	if err != nil {
		return
	}
	socketDir := "/run/containerd/s"
	if dir, err := os.Readlink(filepath.Join(bundle, socketDirLink)); err == nil {
		socketDir = dir
	}
	address, err := cdshim.CreateSocketAddress(ctx, socketDir, f.address, group, false)
	if err != nil || cdshim.CanConnect(address) {
		return
	}
	if err := cdshim.RemoveSocket(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("remove the socket of a dead shim")
	}
}

// Info answers containerd's introspection of the runtime (`-info`): its
// name, version and features (runtimeFeatures).
func (manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	feats, err := typeurl.MarshalAnyToProto(runtimeFeatures())
	if err != nil {
		return nil, fmt.Errorf("marshal the runtime's features: %w", err)
	}
	return &types.RuntimeInfo{Name: RuntimeName, Version: &types.RuntimeVersion{Version: Version}, Features: feats}, nil
}

// Version of the runtime, set by the linker.
var Version = "dev"
