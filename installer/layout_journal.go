package installer

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// journal records what an install or uninstall changed on the host, so a
// failure can put everything back; commit drops what only rollback needed.
type journal struct {
	undo []func() error
	// drop are the replaced directories, removed at commit.
	drop []string
}

func (j *journal) rollback() error {
	var errs []error
	for i := len(j.undo) - 1; i >= 0; i-- {
		if err := j.undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	// The set-aside directories went back in place with the undo steps.
	j.undo, j.drop = nil, nil
	return errors.Join(errs...)
}

func (j *journal) commit() error {
	var errs []error
	for _, d := range j.drop {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove replaced %s: %w", d, err))
		}
	}
	j.undo, j.drop = nil, nil
	return errors.Join(errs...)
}

// mkdirAll creates dir and its missing parents; rollback removes those
// it created.
func (j *journal) mkdirAll(dir string) error {
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
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	j.undo = append(j.undo, func() error {
		var errs []error
		for _, d := range missing {
			if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove created %s: %w", d, err))
			}
		}
		return errors.Join(errs...)
	})
	return nil
}

// writeFile puts data at path atomically unless it is there already.
func (j *journal) writeFile(path string, data []byte) (bool, error) {
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
	if err := j.mkdirAll(filepath.Dir(path)); err != nil {
		return false, err
	}
	if err := writeAtomic(path, data, mode); err != nil {
		return false, err
	}
	j.undo = append(j.undo, func() error {
		if existed {
			return writeAtomic(path, old, mode)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove written %s: %w", path, err)
		}
		return nil
	})
	return true, nil
}

// removeFile removes path, if present.
func (j *journal) removeFile(path string) (bool, error) {
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
	j.undo = append(j.undo, func() error { return writeAtomic(path, old, st.Mode().Perm()) })
	return true, nil
}

// replaceMain keeps a timestamped backup of the main config beside it and
// writes the new one; it returns the backup's host path.
func (j *journal) replaceMain(opts *Options, old, data []byte) (string, error) {
	path := opts.host(opts.ContainerdConfig)
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("containerd config: %w", err)
	}
	backup := opts.ContainerdConfig + ".contrast-backup-" + opts.Now().UTC().Format("20060102T150405.000000000Z")
	if err := writeAtomic(opts.host(backup), old, st.Mode().Perm()); err != nil {
		return "", fmt.Errorf("back up containerd config: %w", err)
	}
	j.undo = append(j.undo, func() error {
		if err := os.Remove(opts.host(backup)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove backup: %w", err)
		}
		return nil
	})
	if err := writeAtomic(path, data, st.Mode().Perm()); err != nil {
		return "", fmt.Errorf("write containerd config: %w", err)
	}
	j.undo = append(j.undo, func() error { return writeAtomic(path, old, st.Mode().Perm()) })
	return backup, nil
}

// replaceDir moves the complete directory tmp to dir; an existing dir is
// set aside and removed at commit.
func (j *journal) replaceDir(tmp, dir string) error {
	aside := ""
	if _, err := os.Stat(dir); err == nil {
		a, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".old-")
		if err != nil {
			return fmt.Errorf("set %s aside: %w", dir, err)
		}
		if err := os.Remove(a); err != nil {
			return fmt.Errorf("set %s aside: %w", dir, err)
		}
		if err := os.Rename(dir, a); err != nil {
			return fmt.Errorf("set %s aside: %w", dir, err)
		}
		aside = a
	}
	if err := os.Rename(tmp, dir); err != nil {
		if aside != "" {
			_ = os.Rename(aside, dir)
		}
		return fmt.Errorf("install %s: %w", dir, err)
	}
	j.undo = append(j.undo, func() error {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove installed %s: %w", dir, err)
		}
		if aside != "" {
			if err := os.Rename(aside, dir); err != nil {
				return fmt.Errorf("restore %s: %w", dir, err)
			}
		}
		return nil
	})
	if aside != "" {
		j.drop = append(j.drop, aside)
	}
	return nil
}

// removeDir sets dir aside (removed at commit), if present.
func (j *journal) removeDir(dir string) (bool, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("remove %s: %w", dir, err)
	}
	a, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".old-")
	if err != nil {
		return false, fmt.Errorf("remove %s: %w", dir, err)
	}
	if err := os.Remove(a); err != nil {
		return false, fmt.Errorf("remove %s: %w", dir, err)
	}
	if err := os.Rename(dir, a); err != nil {
		return false, fmt.Errorf("remove %s: %w", dir, err)
	}
	j.undo = append(j.undo, func() error { return os.Rename(a, dir) })
	j.drop = append(j.drop, a)
	return true, nil
}

// writeAtomic writes data to a temporary file beside path and renames it
// over path, so readers see the old or the new file, never a part.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
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
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
