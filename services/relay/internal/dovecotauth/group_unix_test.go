//go:build unix

package dovecotauth

import (
	"context"
	"os"
	"strconv"
	"syscall"
	"testing"
)

// TestGroupOwnsTheFile: with a group configured, the passwd-file is that
// group's, mode 0640, from the moment it appears.
func TestGroupOwnsTheFile(t *testing.T) {
	gid := -1
	if os.Geteuid() == 0 {
		gid = 4242 // root may give a file any group
	} else if gs, err := os.Getgroups(); err == nil {
		for _, g := range gs {
			if g != os.Getegid() {
				gid = g
				break
			}
		}
	}
	if gid < 0 {
		t.Skip("no group other than the process's own to give the file")
	}
	r := newReplica(t)
	r.put(t, dirUser("u-alice", "alice", "hq", true, hashOf(t, "alice-secret-1")))
	w := newWriter(t, r, Config{Group: strconv.Itoa(gid)})
	if changed, err := w.Sync(context.Background()); err != nil || !changed {
		t.Fatalf("Sync = %v, %v; want written", changed, err)
	}
	fi, err := os.Stat(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Gid) != gid || fi.Mode().Perm() != 0o640 {
		t.Errorf("passwd-file group %v, mode %v; want %d, 0640", fi.Sys(), fi.Mode().Perm(), gid)
	}
	if stamp(w.Path()) != w.written {
		t.Errorf("the writer's stamp %+v is not the file's %+v", w.written, stamp(w.Path()))
	}
}
