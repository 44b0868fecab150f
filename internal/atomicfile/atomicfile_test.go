package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteFileReplacesWithPermissionsAndLeavesNoTemporaryFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte("old content that is longer"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "new" {
		t.Errorf("content = %q, want %q", b, "new")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the file: %v", len(entries), entries)
	}
}

func TestWriteFileIntoMissingDirectoryFailsWithoutCreatingIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "file")
	if err := WriteFile(path, []byte("x"), 0o600); err == nil {
		t.Fatal("WriteFile into a missing directory succeeded")
	}
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Errorf("the missing directory exists now (stat: %v)", err)
	}
}

func TestWriteFileWithRunsTheHookBeforeTheRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "file")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	err := WriteFileWith(path, []byte("new"), 0o600, func(f *os.File) error {
		if b, err := os.ReadFile(path); err != nil || string(b) != "old" {
			t.Errorf("at the hook, path holds %q (%v), want the old content", b, err)
		}
		if err := f.Chmod(0o640); err != nil {
			return err
		}
		return os.Chtimes(f.Name(), mtime, mtime)
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "new" || fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
		t.Errorf("file %q, mode %v, mtime %v; want new, 0640, %v", b, fi.Mode().Perm(), fi.ModTime(), mtime)
	}

	// A hook's error abandons the write.
	hookErr := errors.New("no")
	if err := WriteFileWith(path, []byte("newer"), 0o600, func(*os.File) error { return hookErr }); !errors.Is(err, hookErr) {
		t.Fatalf("WriteFileWith = %v, want the hook's error", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Errorf("after a failed hook the file holds %q, want it unchanged", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries after a failed hook, want only the file", len(entries))
	}
}
