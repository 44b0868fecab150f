// Package atomicfile replaces files so that a reader sees the old content or
// the new one, never a part: the data goes to a temporary file in the same
// directory, is synced, and is renamed over the target; then the directory
// is synced so the rename survives a crash.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data, with permissions perm.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return WriteFileWith(path, data, perm, nil)
}

// WriteFileWith is WriteFile calling before (if not nil) with the
// temporary file once data is written, before the file is synced, closed
// and renamed over path: the place to set its owner, a wider mode or its
// times (synced with the data), or to stat what is about to become path.
// An error from before abandons the write, leaving path as it was.
func WriteFileWith(path string, data []byte, perm os.FileMode, before func(f *os.File) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if before != nil {
		if err := before(f); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}
