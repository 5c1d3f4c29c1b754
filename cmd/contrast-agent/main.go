// contrast-agent is the guest agent of a pod VM. The kernel runs it as /init
// (PID 1): it sets up the VM, then serves the Agent API on vsock port 1024
// and stdio connections on port 1025 until the VM powers off.
//
// Started any other way (development, tests) it skips the init work, acts
// as a subreaper for the containers it starts, and can listen on unix
// sockets instead of vsock.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"time"

	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/agent"
	"github.com/contrast-vm/contrast/agent/guestinit"
	"github.com/contrast-vm/contrast/agent/reaper"
	"github.com/contrast-vm/contrast/agent/tee"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/mdlayher/vsock"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) == 2 && os.Args[1] == agent.PIDHolderArg {
		// PID 1 of the pod's shared PID namespace, not the VM's init.
		agent.RunPIDHolder()
	}
	if os.Getpid() == 1 {
		err := runInit()
		// As init there is nothing to return to: the kernel would panic.
		log.L.WithError(err).Error("contrast-agent failed, powering off")
		guestinit.PowerOff()
	}
	if err := runProcess(); err != nil {
		fmt.Fprintf(os.Stderr, "contrast-agent: %v\n", err)
		os.Exit(1)
	}
}

func setupLogging(out *os.File) {
	log.L.Logger.SetOutput(out)
	log.L.Logger.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: time.RFC3339Nano, DisableColors: true})
}

// runInit is the agent as the VM's init; it returns only on failure.
func runInit() error {
	console, err := guestinit.MountEarly()
	if err != nil {
		return fmt.Errorf("early mounts: %w", err)
	}
	setupLogging(console)
	opts, err := guestinit.ReadCmdline()
	if err != nil {
		log.L.WithError(err).Warn("kernel command line")
	}
	log.L.Logger.SetLevel(opts.LogLevel)
	initramfs, err := guestinit.RootIsInitramfs()
	if err != nil {
		return err
	}
	if initramfs {
		log.L.Debug("moving the root filesystem from the initramfs to a tmpfs")
		if err := guestinit.UnmountEarly(); err != nil {
			return err
		}
		return guestinit.SwitchRoot("/init") // re-executes us on success
	}
	if err := guestinit.Setup(); err != nil {
		return fmt.Errorf("set up the VM: %w", err)
	}
	os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	log.L.Infof("contrast-agent %s starting as init", version)

	ctx := context.Background()
	cfg := agent.DefaultConfig(reaper.Start(ctx))
	cfg.Version = version
	cfg.SetHostname = guestinit.SetHostname
	if cfg.TEE, err = detectTEE(ctx); err != nil {
		return err
	}
	svc, err := agent.NewService(cfg)
	if err != nil {
		return err
	}
	ls, err := listenVsock()
	if err != nil {
		return err
	}
	if err := svc.Serve(ctx, ls); err != nil {
		return err
	}
	return errors.New("agent stopped serving")
}

// detectTEE finds the TEE whose HOSTDATA binds the pod policy and logs it.
func detectTEE(ctx context.Context) (tee.TEE, error) {
	t, err := tee.Detect(ctx)
	if err != nil {
		return nil, fmt.Errorf("detect the TEE: %w", err)
	}
	if t == nil {
		log.G(ctx).Warn("TEE: none: development VM, nothing is attested")
		return nil, nil
	}
	if t.Name() == tee.NameSNPSimulated {
		log.G(ctx).Warnf("TEE: %s: a test image; HOSTDATA comes from the host's fw_cfg and reports are signed with test keys, so nothing is attested", t.Name())
	} else {
		log.G(ctx).Infof("TEE: %s", t.Name())
	}
	return t, nil
}

func listenVsock() (agent.Listeners, error) {
	var ls agent.Listeners
	for _, l := range []struct {
		port uint32
		to   *net.Listener
	}{{api.AgentPort, &ls.Agent}, {api.StdioPort, &ls.Stdio}, {api.ForwardPort, &ls.Forward}} {
		var err error
		if *l.to, err = vsock.ListenContextID(unix.VMADDR_CID_ANY, l.port, nil); err != nil {
			for _, open := range []net.Listener{ls.Agent, ls.Stdio} {
				if open != nil {
					open.Close()
				}
			}
			return agent.Listeners{}, fmt.Errorf("listen on vsock port %d: %w", l.port, err)
		}
	}
	return ls, nil
}

// runProcess is the agent started as an ordinary process.
func runProcess() error {
	def := agent.DefaultConfig(nil)
	agentSock := flag.String("agent-socket", "", "serve the Agent API on this unix socket instead of vsock")
	stdioSock := flag.String("stdio-socket", "", "accept stdio connections on this unix socket instead of vsock")
	forwardSock := flag.String("forward-socket", "", "with -agent-socket: accept port-forward connections on this unix socket (default: none)")
	runDir := flag.String("run-dir", def.RunDir, "state directory (container bundles)")
	runcBin := flag.String("runc", def.RuncBinary, "runc binary")
	runcRoot := flag.String("runc-root", def.RuncRoot, "runc state directory (--root)")
	cgroupParent := flag.String("cgroup-parent", def.CgroupParent, "cgroup under which containers' cgroups are created")
	level := flag.String("log-level", "info", "log level")
	setHostname := flag.Bool("set-hostname", false, "let CreateSandbox set this machine's hostname")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if (*agentSock == "") != (*stdioSock == "") {
		return errors.New("-agent-socket and -stdio-socket go together")
	}
	setupLogging(os.Stderr)
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		return err
	}
	log.L.Logger.SetLevel(lvl)

	// Containers' processes are re-parented to us when runc exits.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become a subreaper: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	cfg := agent.DefaultConfig(reaper.Start(ctx))
	cfg.Version = version
	cfg.RunDir, cfg.RuncBinary, cfg.RuncRoot, cfg.CgroupParent = *runDir, *runcBin, *runcRoot, *cgroupParent
	if !*setHostname {
		cfg.SetHostname = nil
		cfg.ConfigureNetwork = nil // not the VM: leave the host's network alone
	}
	if cfg.TEE, err = detectTEE(ctx); err != nil {
		return err
	}
	svc, err := agent.NewService(cfg)
	if err != nil {
		return err
	}
	var ls agent.Listeners
	if *agentSock != "" {
		if ls.Agent, err = net.Listen("unix", *agentSock); err != nil {
			return err
		}
		if ls.Stdio, err = net.Listen("unix", *stdioSock); err != nil {
			ls.Agent.Close()
			return err
		}
		if *forwardSock != "" {
			if ls.Forward, err = net.Listen("unix", *forwardSock); err != nil {
				ls.Agent.Close()
				ls.Stdio.Close()
				return err
			}
		}
	} else if ls, err = listenVsock(); err != nil {
		return err
	}
	return svc.Serve(ctx, ls)
}
