package installer

import (
	"fmt"
	"os"
)

// dialect is what a containerd config version means for the files the
// installer writes: where the CRI runtimes live and how drop-ins are laid
// out. It is chosen once, from the main config's version, and passed to
// everything that writes or reads a drop-in.
type dialect struct {
	// version is the config version, which every drop-in repeats.
	version int
	// criPlugin is the id of the plugin whose table holds the CRI runtimes.
	criPlugin string
	// sandboxer, when not empty, goes into every runtime table
	// (containerd 2.x wants one).
	sandboxer string
	// carryMainCRI: containerd 1.7 replaces a plugin table with an
	// imported one instead of merging it, so a drop-in must repeat main's
	// whole CRI plugin table beside the runtimes it adds.
	carryMainCRI bool
	// oneDropIn: containerd 1.7 keeps only the CRI table of the last
	// imported file, so every handler and alias shares one drop-in
	// (Options.sharedDropIn) instead of one drop-in each (Options.dropIn).
	oneDropIn bool
}

// dialectFor is the dialect of a config version: 2 is containerd 1.7;
// 3 and 4 (containerd 2.x) share one CRI layout.
func dialectFor(version int) dialect {
	if version == 2 {
		return dialect{version: version, criPlugin: "io.containerd.grpc.v1.cri", carryMainCRI: true, oneDropIn: true}
	}
	return dialect{version: version, criPlugin: "io.containerd.cri.v1.runtime", sandboxer: "podsandbox"}
}

// runtimesPath is the TOML key path of the table of CRI runtimes.
func (d dialect) runtimesPath() []string {
	return []string{"plugins", d.criPlugin, "containerd", "runtimes"}
}

// runtimeTablePath is the TOML key path of one runtime's table.
func (d dialect) runtimeTablePath(handler string) []string {
	return append(d.runtimesPath(), handler)
}

// CRIPluginID returns the id of the plugin whose config holds the CRI
// runtimes for a config version: containerd 1.7 (version 2) keeps them in the
// monolithic CRI plugin, 2.x (versions 3 and 4) in the runtime plugin.
func CRIPluginID(version int) string { return dialectFor(version).criPlugin }

// RuntimeTablePath returns the TOML key path of the runtime table for handler
// in a config of the given version.
func RuntimeTablePath(version int, handler string) []string {
	return dialectFor(version).runtimeTablePath(handler)
}

// mainConfig is containerd's main config as an install, uninstall or
// status found it.
type mainConfig struct {
	data    []byte
	dialect dialect
	imports []string
}

// readMain reads the main containerd config and detects its dialect.
func readMain(opts *Options) (mainConfig, error) {
	data, err := os.ReadFile(opts.host(opts.ContainerdConfig))
	if err != nil {
		return mainConfig{}, fmt.Errorf("read containerd config: %w", err)
	}
	cfg, err := parseMain(data)
	if err != nil {
		return mainConfig{}, fmt.Errorf("containerd config %s: %w", opts.ContainerdConfig, err)
	}
	return cfg, nil
}

func parseMain(data []byte) (mainConfig, error) {
	doc, err := parse(data)
	if err != nil {
		return mainConfig{}, err
	}
	version, err := versionOf(doc)
	if err != nil {
		return mainConfig{}, err
	}
	imports, err := importsOf(doc)
	if err != nil {
		return mainConfig{}, err
	}
	return mainConfig{data: data, dialect: dialectFor(version), imports: imports}, nil
}
