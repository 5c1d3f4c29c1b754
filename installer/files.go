package installer

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// The host file operations of an install or uninstall: each records its
// undo on the stack once it has changed something, and errors name the
// file.

// mkdirAll creates dir and its missing parents; the undo removes those it
// created.
func (u *undoStack) mkdirAll(dir string) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	u.push("create "+dir, func() error {
		var errs []error
		for _, d := range missing {
			if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	return nil
}

// writeFile puts data at path atomically unless it is there already; it
// says whether it wrote.
func (u *undoStack) writeFile(path string, data []byte) (bool, error) {
	old, err := os.ReadFile(path)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if existed && bytes.Equal(old, data) {
		return false, nil
	}
	mode := fs.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	if err := u.mkdirAll(filepath.Dir(path)); err != nil {
		return false, err
	}
	if err := writeAtomic(path, data, mode); err != nil {
		return false, err
	}
	if existed {
		u.push("write "+path, func() error { return writeAtomic(path, old, mode) })
	} else {
		u.push("write "+path, func() error { return removeIfPresent(path) })
	}
	return true, nil
}

// removeFile removes path, if present; it says whether it removed.
func (u *undoStack) removeFile(path string) (bool, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("remove %s: %w", path, err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("remove %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return false, fmt.Errorf("remove %s: %w", path, err)
	}
	u.push("remove "+path, func() error { return writeAtomic(path, old, st.Mode().Perm()) })
	return true, nil
}

// replaceMain keeps a timestamped backup of the main config beside it and
// writes the new one; it returns the backup's host path.
func (u *undoStack) replaceMain(opts *Options, old, data []byte) (string, error) {
	path := opts.host(opts.ContainerdConfig)
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("containerd config: %w", err)
	}
	backup := opts.ContainerdConfig + ".contrast-backup-" + opts.Now().UTC().Format("20060102T150405.000000000Z")
	if err := writeAtomic(opts.host(backup), old, st.Mode().Perm()); err != nil {
		return "", fmt.Errorf("back up containerd config: %w", err)
	}
	u.push("back up to "+backup, func() error { return removeIfPresent(opts.host(backup)) })
	if err := writeAtomic(path, data, st.Mode().Perm()); err != nil {
		return "", fmt.Errorf("write containerd config: %w", err)
	}
	u.push("write "+path, func() error { return writeAtomic(path, old, st.Mode().Perm()) })
	return backup, nil
}

// replaceDir moves the complete directory tmp to dir; an existing dir is
// set aside, and removed at commit.
func (u *undoStack) replaceDir(tmp, dir string) error {
	aside := ""
	if _, err := os.Stat(dir); err == nil {
		if aside, err = setAside(dir); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if aside != "" {
			_ = os.Rename(aside, dir)
		}
		return fmt.Errorf("install %s: %w", dir, err)
	}
	u.push("install "+dir, func() error {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		if aside != "" {
			return os.Rename(aside, dir)
		}
		return nil
	})
	if aside != "" {
		u.discard = append(u.discard, aside)
	}
	return nil
}

// removeDir sets dir aside (removed at commit), if present; it says
// whether it was.
func (u *undoStack) removeDir(dir string) (bool, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("remove %s: %w", dir, err)
	}
	aside, err := setAside(dir)
	if err != nil {
		return false, err
	}
	u.push("remove "+dir, func() error { return os.Rename(aside, dir) })
	u.discard = append(u.discard, aside)
	return true, nil
}

// setAside renames dir to a new name beside it (<dir>.old-*), which
// installedHandlers skips, and returns that name.
func setAside(dir string) (string, error) {
	aside, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".old-")
	if err == nil {
		err = os.Remove(aside)
	}
	if err == nil {
		err = os.Rename(dir, aside)
	}
	if err != nil {
		return "", fmt.Errorf("set %s aside: %w", dir, err)
	}
	return aside, nil
}

func removeIfPresent(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// writeAtomic writes data to a temporary file beside path and renames it
// over path, so readers see the old or the new file, never a part.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	if err := fillAndClose(f, data, mode); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeSynced writes a new file and flushes it.
func writeSynced(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	return fillAndClose(f, data, mode)
}

// fillAndClose writes data to f, sets its mode (which the umask may have
// narrowed at creation), flushes and closes it.
func fillAndClose(f *os.File, data []byte, mode fs.FileMode) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
