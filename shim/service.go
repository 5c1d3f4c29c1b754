package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runtimeoptions/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/layer"
)

// HypervisorFactory builds the hypervisor a configuration names.
type HypervisorFactory func(ctx context.Context, cfg Config) (hypervisor.Hypervisor, error)

// service is the task API of one pod, served by one shim process. Its
// methods are thin: they check the request and the move it asks for, then
// leave the work to the pod (pod.go), its guest containers (container.go)
// and the event order (events.go).
//
// Locks hold bookkeeping only: mu guards the maps; each container's own mu
// orders that container's lifecycle requests; booting the pod holds bootMu.
// Guest requests and layer conversion run outside mu, so an exec never
// waits on another container's create.
type service struct {
	ctx           context.Context // lives as long as the shim
	publisher     events.Publisher
	shutdown      shutdown.Service
	newHypervisor HypervisorFactory
	// imageLayers finds the layers of a CRI container's image (in
	// containerd's content store).
	imageLayers func(ctx context.Context, namespace, image string) ([]layer.Blob, error)
	// containerdAddress is containerd's gRPC socket; client connects to it
	// on first use.
	containerdAddress string
	clientOnce        sync.Once
	client            *containerd.Client
	clientErr         error

	bootMu sync.Mutex // held while the pod VM boots

	mu          sync.Mutex
	pod         *pod
	podStopping bool // the sandbox was killed: the VM's end is expected
	containers  map[string]*container
}

// NewTaskService returns the task service; publisher and shutdown come from
// containerd's shim library.
func NewTaskService(ctx context.Context, publisher events.Publisher, sd shutdown.Service, newHypervisor HypervisorFactory) *service {
	s := &service{
		ctx:           ctx,
		publisher:     publisher,
		shutdown:      sd,
		newHypervisor: newHypervisor,
		containers:    map[string]*container{},
	}
	s.imageLayers = s.containerdImageLayers
	sd.RegisterCallback(func(ctx context.Context) error {
		s.mu.Lock()
		p := s.pod
		s.mu.Unlock()
		var err error
		if p != nil {
			err = p.stop(ctx)
		}
		if s.client != nil {
			s.client.Close()
		}
		return err
	})
	return s
}

// containerdImageLayers reads an image's layers from containerd's content
// store, connecting to containerd once.
func (s *service) containerdImageLayers(ctx context.Context, namespace, image string) ([]layer.Blob, error) {
	s.clientOnce.Do(func() {
		if s.containerdAddress == "" {
			s.clientErr = errors.New("containerd's address is unknown (the shim was started without -address)")
			return
		}
		s.client, s.clientErr = containerd.New(s.containerdAddress)
		if s.clientErr != nil {
			s.clientErr = fmt.Errorf("connect to containerd at %s: %w", s.containerdAddress, s.clientErr)
		}
	})
	if s.clientErr != nil {
		return nil, fmt.Errorf("image %s: %w", image, s.clientErr)
	}
	return imageLayers(ctx, s.client, namespace, image)
}

// RegisterTTRPC serves task API v3 and, for containerd 1.7, v2.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	registerTaskV2(server, s)
	return nil
}

func namespaceOf(ctx context.Context) string {
	ns, _ := namespaces.Namespace(ctx)
	return ns
}

// grpcErr maps errors to the codes containerd understands.
func grpcErr(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}

func (s *service) getContainer(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %s in container %s: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// livePod returns the pod VM, or an error when it is gone.
func (s *service) livePod() (*pod, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pod == nil {
		return nil, fmt.Errorf("no pod VM in this shim: %w", errdefs.ErrFailedPrecondition)
	}
	select {
	case <-s.pod.vm.Done():
		return nil, fmt.Errorf("VM of pod %s has stopped: %w", s.pod.id, errdefs.ErrUnavailable)
	default:
	}
	return s.pod, nil
}

// guestContainer returns a container that runs in the guest, and the pod.
func (s *service) guestContainer(id, what string) (*container, *pod, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	if c.sandbox {
		return nil, nil, fmt.Errorf("%s the pod sandbox %s: it stands for the VM and runs no processes: %w", what, id, errdefs.ErrNotImplemented)
	}
	pd, err := s.livePod()
	if err != nil {
		return nil, nil, err
	}
	return c, pd, nil
}

// configFromOptions loads the runtime configuration the handler names, and
// says which file it was.
func configFromOptions(opts *anypb.Any) (Config, string, error) {
	path := DefaultConfigPath
	if opts != nil && opts.GetTypeUrl() != "" {
		v, err := typeurl.UnmarshalAny(opts)
		if err != nil {
			return Config{}, "", fmt.Errorf("runtime options: %w", err)
		}
		if o, ok := v.(*runtimeoptions.Options); ok && o.ConfigPath != "" {
			path = o.ConfigPath
		}
	}
	cfg, err := LoadConfig(path)
	return cfg, path, err
}

// readSpec reads the bundle's OCI spec; a malformed one is the user's error.
func readSpec(bundle string) (*specs.Spec, []byte, error) {
	path := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read bundle spec: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, nil, fmt.Errorf("bundle spec %s is malformed: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil && spec.Annotations[annotationContainerType] != containerTypeSandbox {
		return nil, nil, fmt.Errorf("bundle spec %s has no process: %w", path, errdefs.ErrInvalidArgument)
	}
	return &spec, data, nil
}
