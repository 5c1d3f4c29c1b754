package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"
)

// The guest runs cgroup v2 (see guestinit). cgroup v1 is served too, the
// way containerd's runc shim does, for the agent run on a v1 host (the
// service tests on this project's machines).

// cgroupMount is where the unified (v2) hierarchy is mounted.
const cgroupMount = "/sys/fs/cgroup"

// cgroupStats reads the metrics of the cgroup group (a path below the
// hierarchy root) as containerd's task Stats carries them: the type URL
// and bytes of io.containerd.cgroups.v2.Metrics, or v1.Metrics on v1.
func cgroupStats(group string) (typeURL string, value []byte, err error) {
	var metrics any
	switch cgroups.Mode() {
	case cgroups.Unified:
		if _, err := os.Stat(filepath.Join(cgroupMount, group)); err != nil {
			return "", nil, fmt.Errorf("cgroup %s: %w", group, err)
		}
		m, err := cgroup2.Load(group)
		if err != nil {
			return "", nil, fmt.Errorf("load cgroup %s: %w", group, err)
		}
		st, err := m.Stat()
		if err != nil {
			return "", nil, fmt.Errorf("read cgroup %s: %w", group, err)
		}
		metrics = st
	case cgroups.Legacy, cgroups.Hybrid:
		cg, err := cgroup1.Load(cgroup1.StaticPath(group))
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return "", nil, fmt.Errorf("cgroup %s: %w", group, os.ErrNotExist)
		}
		if err != nil {
			return "", nil, fmt.Errorf("load cgroup %s: %w", group, err)
		}
		st, err := cg.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return "", nil, fmt.Errorf("read cgroup %s: %w", group, err)
		}
		metrics = st
	default:
		return "", nil, errors.New("no cgroup hierarchy is mounted")
	}
	a, err := typeurl.MarshalAny(metrics)
	if err != nil {
		return "", nil, fmt.Errorf("encode metrics of cgroup %s: %w", group, err)
	}
	return a.GetTypeUrl(), a.GetValue(), nil
}

// oomCounter returns the file that counts the OOM kills in group (key
// oom_kill) and whether the kernel wakes poll(2) readers when it changes.
func oomCounter(group string) (file string, notifies bool, err error) {
	switch cgroups.Mode() {
	case cgroups.Unified:
		// Every change of memory.events is a kernfs notification:
		// poll(2) sees POLLPRI (inotify, which the guest kernel lacks,
		// would see IN_MODIFY).
		return filepath.Join(cgroupMount, group, "memory.events"), true, nil
	case cgroups.Legacy, cgroups.Hybrid:
		subs, err := cgroup1.Default()
		if err != nil {
			return "", false, fmt.Errorf("cgroup v1 hierarchies: %w", err)
		}
		for _, s := range subs {
			if p, ok := s.(interface{ Path(string) string }); ok && s.Name() == cgroup1.Memory {
				// memory.oom_control changes silently: it is polled.
				return filepath.Join(p.Path(group), "memory.oom_control"), false, nil
			}
		}
		return "", false, errors.New("no cgroup v1 memory hierarchy")
	}
	return "", false, errors.New("no cgroup hierarchy is mounted")
}

// parseOOMKills reads the oom_kill count from memory.events (v2) or
// memory.oom_control (v1): lines of "key value".
func parseOOMKills(b []byte) (uint64, error) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(" "))
		if ok && string(k) == "oom_kill" {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("oom_kill %q: %w", v, err)
			}
			return n, nil
		}
	}
	return 0, errors.New("no oom_kill line")
}

// oomEvents queues the ids of containers that saw an OOM kill until
// WaitOOM takes them: at most one pending event per container, since the
// host learns nothing more from a second one.
type oomEvents struct {
	mu    sync.Mutex
	queue []string
	wake  chan struct{} // closed and replaced when an event is queued
}

func newOOMEvents() *oomEvents { return &oomEvents{wake: make(chan struct{})} }

func (q *oomEvents) push(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if slices.Contains(q.queue, id) {
		return
	}
	q.queue = append(q.queue, id)
	close(q.wake)
	q.wake = make(chan struct{})
}

// wait takes the oldest event, waiting for one until ctx ends. An event
// taken just as ctx ended is put back: its caller is gone.
func (q *oomEvents) wait(ctx context.Context) (string, error) {
	for {
		q.mu.Lock()
		if len(q.queue) > 0 && ctx.Err() == nil {
			id := q.queue[0]
			q.queue = q.queue[1:]
			q.mu.Unlock()
			return id, nil
		}
		wake := q.wake
		q.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// oomPollInterval is how often a counter without notifications is read.
const oomPollInterval = 100 * time.Millisecond

// oomWatcher turns increases of one container's OOM kill counter into events.
type oomWatcher struct {
	id     string
	file   string
	events *oomEvents

	mu    sync.Mutex
	kills uint64

	stopOnce sync.Once
	stopFd   int // eventfd: written to stop the loop
	done     chan struct{}
}

// watchOOM starts watching the OOM kills of the container id in group.
func watchOOM(ctx context.Context, id, group string, events *oomEvents) (*oomWatcher, error) {
	file, notifies, err := oomCounter(group)
	if err != nil {
		return nil, err
	}
	return watchOOMFile(ctx, id, file, notifies, events)
}

// watchOOMFile watches the oom_kill count in file, waiting for kernfs
// notifications if notifies, else reading it every oomPollInterval.
func watchOOMFile(ctx context.Context, id, file string, notifies bool, events *oomEvents) (*oomWatcher, error) {
	fd, err := unix.Open(file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", file, err)
	}
	w := &oomWatcher{id: id, file: file, events: events, done: make(chan struct{})}
	kills, err := readOOMKills(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	w.kills = kills // a new cgroup: 0, unless the host reuses an id
	if w.stopFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	go w.run(ctx, fd, notifies)
	return w, nil
}

func readOOMKills(fd int) (uint64, error) {
	buf := make([]byte, 4096)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		return 0, err
	}
	return parseOOMKills(buf[:n])
}

func (w *oomWatcher) run(ctx context.Context, fd int, notifies bool) {
	defer close(w.done)
	defer unix.Close(fd)
	lg := log.G(ctx).WithField("container", w.id)
	buf := make([]byte, 4096)
	for {
		// Reading also re-arms the notification (kernfs compares what the
		// reader saw with the file's event count).
		n, err := unix.Pread(fd, buf, 0)
		if err != nil {
			// The cgroup is gone (runc delete): nothing more to watch.
			lg.WithError(err).Debugf("OOM watch: %s", w.file)
			return
		}
		if kills, err := parseOOMKills(buf[:n]); err != nil {
			lg.WithError(err).Warnf("OOM watch: %s", w.file)
		} else {
			w.observe(kills)
		}
		fds := []unix.PollFd{{Fd: int32(w.stopFd), Events: unix.POLLIN}}
		timeout := int(oomPollInterval / time.Millisecond)
		if notifies {
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLPRI})
			timeout = -1
		}
		if _, err := unix.Poll(fds, timeout); err != nil && !errors.Is(err, unix.EINTR) {
			lg.WithError(err).Warnf("OOM watch: poll %s; OOM kills are no longer reported", w.file)
			return
		}
		if fds[0].Revents != 0 {
			return
		}
	}
}

// observe queues an event if the counter grew since the last look.
func (w *oomWatcher) observe(kills uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if kills > w.kills {
		w.kills = kills
		w.events.push(w.id)
	}
}

// check reads the counter now: a process's exit or the container's removal
// must not overtake the OOM kill that caused it. A nil watcher (a container
// whose OOM kills cannot be watched) does nothing.
func (w *oomWatcher) check() {
	if w == nil {
		return
	}
	b, err := os.ReadFile(w.file)
	if err == nil {
		var kills uint64
		if kills, err = parseOOMKills(b); err == nil {
			w.observe(kills)
			return
		}
	}
	// Gone with its cgroup: the watch has seen the last change.
	log.L.WithError(err).WithField("container", w.id).Debugf("OOM check of %s", w.file)
}

// stop ends the watch and waits for it; safe to repeat.
func (w *oomWatcher) stop() {
	w.stopOnce.Do(func() {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		_, _ = unix.Write(w.stopFd, one[:])
		<-w.done
		// Closed only here, so stop never writes to a reused descriptor.
		unix.Close(w.stopFd)
	})
}
