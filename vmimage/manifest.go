package vmimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/contrast-vm/contrast/api/agent"
)

// Names of the files in an image directory.
const (
	KernelFile   = "kernel"
	InitrdFile   = "initrd"
	RootDiskFile = "rootfs.img"
	ManifestFile = "manifest.json"
)

// manifestSchema is bumped when a reader of an older manifest would
// misunderstand a newer one.
const manifestSchema = 1

// Manifest describes a built guest image. It is written as manifest.json next
// to the files and, like them, depends only on the build's inputs.
type Manifest struct {
	Schema int `json:"schema"`
	// KernelRelease is `uname -r` of the guest kernel.
	KernelRelease string `json:"kernelRelease"`
	// KernelCmdline is the command line the runtime boots the image with. It is
	// part of the SEV-SNP launch measurement, so the runtime must use it as is.
	KernelCmdline string `json:"kernelCmdline"`
	// Files lists the image's files, sorted by name: the kernel and either
	// the initrd or the root disk.
	Files []File `json:"files"`
	// RootDisk describes the root disk (rootfs.img), if the image has one;
	// KernelCmdline then opens it (RootDisk.Cmdline).
	RootDisk *RootDisk `json:"rootDisk,omitempty"`
	// Components lists what went into the initrd or root disk.
	Components []Component `json:"components"`
}

// File is one file of an image directory.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Component is a binary inside the initrd and where it came from, as far as
// its own Go build information tells.
type Component struct {
	Name        string `json:"name"`
	Path        string `json:"path"` // inside the guest
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
	Module      string `json:"module,omitempty"`
	Version     string `json:"version,omitempty"`
	GoVersion   string `json:"goVersion,omitempty"`
	VCSRevision string `json:"vcsRevision,omitempty"`
	VCSModified bool   `json:"vcsModified,omitempty"`
}

// File returns the manifest's entry for the named file.
func (m *Manifest) File(name string) (File, bool) {
	for _, f := range m.Files {
		if f.Name == name {
			return f, true
		}
	}
	return File{}, false
}

func (m *Manifest) marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// Image is a guest image directory whose files match its manifest.
type Image struct {
	Dir      string
	Manifest Manifest
}

// Kernel is the path of the bzImage.
func (im *Image) Kernel() string { return filepath.Join(im.Dir, KernelFile) }

// Initrd is the path of the initramfs; "" if the image has a root disk instead.
func (im *Image) Initrd() string {
	if _, ok := im.Manifest.File(InitrdFile); !ok {
		return ""
	}
	return filepath.Join(im.Dir, InitrdFile)
}

// RootDisk is the path of the root disk image, to be attached read-only as
// the VM's first disk; "" if the image has an initramfs instead.
func (im *Image) RootDisk() string {
	if im.Manifest.RootDisk == nil {
		return ""
	}
	return filepath.Join(im.Dir, RootDiskFile)
}

// KernelCmdline is the command line to boot the image with.
func (im *Image) KernelCmdline() string { return im.Manifest.KernelCmdline }

// Load reads the image in dir and checks every file against the manifest
// (size and SHA-256), so a missing, truncated or replaced file is found
// before a VM boots from it. Errors name the file at fault.
func Load(dir string) (*Image, error) {
	raw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("guest image %s: %s is missing (build the image with `contrast image build`)", dir, ManifestFile)
	}
	if err != nil {
		return nil, fmt.Errorf("guest image %s: %w", dir, err)
	}
	im := &Image{Dir: dir}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&im.Manifest); err != nil {
		return nil, fmt.Errorf("guest image %s: %s is malformed: %w", dir, ManifestFile, err)
	}
	if err := im.Manifest.validate(); err != nil {
		return nil, fmt.Errorf("guest image %s: %s: %w", dir, ManifestFile, err)
	}
	for _, f := range im.Manifest.Files {
		if err := checkFile(filepath.Join(dir, f.Name), f); err != nil {
			return nil, fmt.Errorf("guest image %s: %w", dir, err)
		}
	}
	return im, nil
}

func (m *Manifest) validate() error {
	if m.Schema != manifestSchema {
		return fmt.Errorf("schema %d, this build reads schema %d", m.Schema, manifestSchema)
	}
	if m.KernelRelease == "" {
		return fmt.Errorf("kernelRelease is empty")
	}
	if m.KernelCmdline == "" {
		return fmt.Errorf("kernelCmdline is empty")
	}
	if err := checkCmdline(m.KernelCmdline); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		// A name is a file in the image directory, nothing else: the manifest
		// must not make the runtime read some other file.
		if f.Name != KernelFile && f.Name != InitrdFile && f.Name != RootDiskFile {
			return fmt.Errorf("unknown file %q", f.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("file %s listed twice", f.Name)
		}
		seen[f.Name] = true
		if f.Size < 0 {
			return fmt.Errorf("file %s: negative size", f.Name)
		}
		if b, err := hex.DecodeString(f.SHA256); err != nil || len(b) != sha256.Size || strings.ToLower(f.SHA256) != f.SHA256 {
			return fmt.Errorf("file %s: sha256 %q is not 64 lower-case hex digits", f.Name, f.SHA256)
		}
	}
	if !seen[KernelFile] {
		return fmt.Errorf("file %s is not listed", KernelFile)
	}
	// The guest's root is one or the other.
	if seen[InitrdFile] == seen[RootDiskFile] {
		return fmt.Errorf("lists %s and %s, or neither: want exactly one", InitrdFile, RootDiskFile)
	}
	if seen[RootDiskFile] != (m.RootDisk != nil) {
		return fmt.Errorf("%s is listed without rootDisk, or rootDisk without it", RootDiskFile)
	}
	if m.RootDisk != nil {
		if err := m.RootDisk.validate(); err != nil {
			return err
		}
		// The command line is what opens the disk: one that does not
		// carry these parameters boots something else, or nothing.
		if !strings.Contains(m.KernelCmdline, m.RootDisk.Cmdline()) {
			return fmt.Errorf("kernelCmdline lacks the root disk's arguments %q", m.RootDisk.Cmdline())
		}
		f, _ := m.File(RootDiskFile)
		if need := int64(m.RootDisk.HashStartBlock) * agent.VerityBlockSize; f.Size <= need {
			return fmt.Errorf("file %s has %d bytes, too few for a hash tree from block %d", RootDiskFile, f.Size, m.RootDisk.HashStartBlock)
		}
	}
	return nil
}

func checkFile(p string, want File) error {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is missing", want.Name)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", want.Name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", want.Name, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", want.Name)
	}
	if st.Size() != want.Size {
		return fmt.Errorf("%s has %d bytes, the manifest says %d: it changed after the build", want.Name, st.Size(), want.Size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read %s: %w", want.Name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("%s has sha256 %s, the manifest says %s: it changed after the build", want.Name, got, want.SHA256)
	}
	return nil
}
