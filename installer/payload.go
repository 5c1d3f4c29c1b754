package installer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"text/template"

	"github.com/BurntSushi/toml"
)

// HandlerName is the handler the payload installs as:
// <base>-<first 8 hex digits of the SHA-256 over the payload and prefix>.
func HandlerName(opts Options) (string, error) {
	if err := opts.defaults(); err != nil {
		return "", err
	}
	sum, err := payloadDigest(opts.Source, opts.Prefix)
	if err != nil {
		return "", err
	}
	return opts.HandlerBase + "-" + sum[:8], nil
}

// payloadDigest hashes every file of the payload (path, mode, content)
// and the prefix, which the rendered configuration names.
func payloadDigest(src, prefix string) (string, error) {
	for _, req := range []string{ShimPath, KernelPath, RuntimeConfigPath} {
		if st, err := os.Stat(filepath.Join(src, req)); err != nil {
			return "", fmt.Errorf("payload %s: %w", src, err)
		} else if !st.Mode().IsRegular() {
			return "", fmt.Errorf("payload %s: %s is not a regular file", src, req)
		}
	}
	// The guest's root: a root disk, or an initrd (images built with
	// --format initrd).
	roots := 0
	for _, root := range []string{RootDiskPath, InitrdPath} {
		if st, err := os.Stat(filepath.Join(src, root)); err == nil && st.Mode().IsRegular() {
			roots++
		}
	}
	if roots != 1 {
		return "", fmt.Errorf("payload %s: want exactly one of %s and %s, found %d", src, RootDiskPath, InitrdPath, roots)
	}
	h := sha256.New()
	fmt.Fprintf(h, "prefix %s\x00", prefix)
	err := walkFiles(src, func(rel string, st fs.FileInfo, path string) error {
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", rel, st.Mode().Perm(), st.Size())
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(h, f)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("hash payload %s: %w", src, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// walkFiles calls f for every regular file under root (following
// symlinks to files), in lexical order.
func walkFiles(root string, f func(rel string, st fs.FileInfo, path string) error) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", path)
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		return f(filepath.ToSlash(rel), st, path)
	})
}

// renderTree is the handler directory's content: the payload with
// runtime.toml rendered for the installed paths.
func renderTree(opts *Options, name, hostDir string) (map[string]fileContent, error) {
	files := map[string]fileContent{}
	err := walkFiles(opts.Source, func(rel string, st fs.FileInfo, path string) error {
		if rel == RuntimeConfigPath {
			return nil
		}
		files[rel] = fileContent{src: path, mode: st.Mode().Perm()}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read payload %s: %w", opts.Source, err)
	}
	tmplText, err := os.ReadFile(filepath.Join(opts.Source, RuntimeConfigPath))
	if err != nil {
		return nil, fmt.Errorf("read runtime configuration template: %w", err)
	}
	tmpl, err := template.New(RuntimeConfigPath).Option("missingkey=error").Parse(string(tmplText))
	if err != nil {
		return nil, fmt.Errorf("runtime configuration template: %w", err)
	}
	data := TemplateData{
		Handler: name, Dir: hostDir,
		Shim:   filepath.Join(hostDir, ShimPath),
		Kernel: filepath.Join(hostDir, KernelPath),
	}
	if _, ok := files[RootDiskPath]; ok {
		data.RootDisk = filepath.Join(hostDir, RootDiskPath)
	}
	if _, ok := files[InitrdPath]; ok {
		data.Initrd = filepath.Join(hostDir, InitrdPath)
	}
	if _, ok := files[FirmwarePath]; ok {
		data.Firmware = filepath.Join(hostDir, FirmwarePath)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("render runtime configuration: %w", err)
	}
	// The shim reads this file at every pod start: check here that the
	// rendered file is TOML and names the installed image.
	var rendered struct {
		Hypervisor struct {
			Kernel, Initrd string
			RootDisk       string `toml:"rootfs"`
		} `toml:"hypervisor"`
	}
	if _, err := toml.Decode(b.String(), &rendered); err != nil {
		return nil, fmt.Errorf("rendered runtime configuration: %w", err)
	}
	r := rendered.Hypervisor
	if r.Kernel != data.Kernel || r.Initrd != data.Initrd || r.RootDisk != data.RootDisk {
		return nil, fmt.Errorf("rendered runtime configuration: hypervisor.kernel %q, initrd %q and rootfs %q must be the installed %q, %q and %q (template fields {{.Kernel}}, {{.Initrd}}, {{.RootDisk}})",
			r.Kernel, r.Initrd, r.RootDisk, data.Kernel, data.Initrd, data.RootDisk)
	}
	files[RuntimeConfigPath] = fileContent{data: b.Bytes(), mode: 0o644}
	return files, nil
}

// fileContent is a file to install: src copied, or data.
type fileContent struct {
	src  string
	data []byte
	mode fs.FileMode
}

func (f fileContent) bytes() ([]byte, error) {
	if f.src == "" {
		return f.data, nil
	}
	return os.ReadFile(f.src)
}

// treeEqual says whether dir holds exactly files.
func treeEqual(dir string, files map[string]fileContent) (bool, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	seen := 0
	equal := true
	err := walkFiles(dir, func(rel string, st fs.FileInfo, path string) error {
		f, ok := files[rel]
		if !ok || st.Mode().Perm() != f.mode {
			equal = false
			return fs.SkipAll
		}
		want, err := f.bytes()
		if err != nil {
			return err
		}
		got, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			equal = false
			return fs.SkipAll
		}
		seen++
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("compare installed %s: %w", dir, err)
	}
	return equal && seen == len(files), nil
}
