// Package dovecotauth lets Dovecot authenticate IMAP and POP3 users against
// the site's directory replica: it keeps a Dovecot passwd-file (passdb
// driver = passwd-file) current from the replica.
//
// For every user whose home site is this site, who is enabled and has a
// password hash, the file has the line
//
//	alice:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>::::::
//
// (Dovecot 2.3's user:password:uid:gid:gecos:home:shell:extra_fields; only
// the first two are used: the userdb is static, see deployments/dovecot),
// and, with LoginByAddress, a second line that lets the user log in with
// their primary address too and turns the login into the user name, so
// that both reach the same mailbox:
//
//	alice@example.com:{ARGON2ID}...::::::user=alice
//
// Names are written in ASCII lower case (Dovecot's auth_username_format =
// %Lu lower-cases logins before the lookup). Users whose name or address
// Dovecot would refuse as a login (auth_username_chars: letters, digits,
// '.', '-', '_', '@'), or whose hash is not an {ARGON2ID} or {BLF-CRYPT}
// hash, are left out and logged. Aliases are not login names.
//
// The file is replaced atomically (a temporary file in the same directory,
// fsynced, renamed over it, the directory fsynced), only when its content
// changes, with mode 0640 (group Config.Group, so that Dovecot's auth
// process can read it). Dovecot re-reads a passwd-file when its
// modification time or size changes, checking at most once a second; the
// writer gives every new version a later modification time than the one it
// replaces, so a change is picked up by the next login at least a second
// later.
package dovecotauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/passwd"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
)

// Config configures the passwd-file writer.
type Config struct {
	PasswdFile     string        `yaml:"passwd_file" doc:"the Dovecot passwd-file kept current from the directory replica (passdb { driver = passwd-file  args = <this file> })"`
	Group          string        `yaml:"group" doc:"group owning the passwd-file (mode 0640), e.g. dovecot, so that Dovecot's auth process can read it; empty: the relay's group"`
	LoginByAddress bool          `yaml:"login_by_address" doc:"also let users log in with their primary address (a second line per user, mapped to the user name)"`
	PollInterval   time.Duration `yaml:"poll_interval" doc:"how often the replica's sync cursor is checked for changes"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		PasswdFile:     "var/dovecot/passwd",
		LoginByAddress: true,
		PollInterval:   time.Second,
	}
}

// Validate checks the settings; keys are relative ("passwd_file").
func (c Config) Validate() error {
	var errs []error
	if c.PasswdFile == "" {
		errs = append(errs, config.Errorf("passwd_file", "must be set"))
	} else if strings.ContainsAny(c.PasswdFile, " \t\n%$#") {
		errs = append(errs, config.Errorf("passwd_file", "%q: a path in a Dovecot passdb's args may not contain spaces, '%%', '$' or '#'", c.PasswdFile))
	}
	if c.Group != "" {
		if _, err := lookupGroup(c.Group); err != nil {
			errs = append(errs, config.Errorf("group", "%v", err))
		}
	}
	if c.PollInterval <= 0 {
		errs = append(errs, config.Errorf("poll_interval", "must be positive"))
	}
	return config.Join(errs...)
}

func lookupGroup(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}

// Options are what the writer gets from the running relay.
type Options struct {
	// Logger receives what the writer does; nil discards it. Hashes are
	// never logged.
	Logger *slog.Logger
	// Now returns the current time; nil: time.Now.
	Now func() time.Time
}

// Writer keeps the passwd-file current. Sync and Run may be called from
// several goroutines; writes are serialised.
type Writer struct {
	cfg  Config
	path string
	gid  int // -1: leave the group alone
	dir  sitestate.DirectoryReader
	site string
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	written fileStamp // what the last write left on disk
}

// fileStamp identifies one version of the file on disk.
type fileStamp struct {
	ok      bool
	size    int64
	modTime int64 // UnixNano
	ino     uint64
}

// New returns a writer of cfg.PasswdFile for the users of site (a site
// name, as in replica.User.Site) in dir. The file's directory is created
// if missing.
func New(cfg Config, dir sitestate.DirectoryReader, site string, opts Options) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dovecotauth: %w", err)
	}
	if dir == nil {
		return nil, errors.New("dovecotauth: no directory replica")
	}
	if site == "" {
		return nil, errors.New("dovecotauth: empty site name")
	}
	path, err := filepath.Abs(cfg.PasswdFile)
	if err != nil {
		return nil, fmt.Errorf("dovecotauth: passwd_file: %w", err)
	}
	w := &Writer{cfg: cfg, path: path, gid: -1, dir: dir, site: site, log: opts.Logger, now: opts.Now}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	w.log = w.log.With("component", "dovecotauth", "passwd_file", path)
	if w.now == nil {
		w.now = time.Now
	}
	if cfg.Group != "" {
		if w.gid, err = lookupGroup(cfg.Group); err != nil {
			return nil, fmt.Errorf("dovecotauth: group %q: %w", cfg.Group, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("dovecotauth: passwd_file directory: %w", err)
	}
	return w, nil
}

// Path is the absolute path of the passwd-file.
func (w *Writer) Path() string { return w.path }

// Sync renders the passwd-file from the replica and replaces the file if
// its content differs; it reports whether it wrote. While the replica has
// never been synced (empty cursor) an existing file is left alone, so that
// a fresh replica does not lock everybody out; a missing one is created.
func (w *Writer) Sync(ctx context.Context) (changed bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, err := w.dir.SyncState(ctx)
	if err != nil {
		return false, fmt.Errorf("dovecotauth: replica sync state: %w", err)
	}
	old, err := os.ReadFile(w.path)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("dovecotauth: reading %s: %w", w.path, err)
	}
	if st.Cursor == "" && exists {
		w.written = stamp(w.path)
		return false, nil
	}
	content, stats, err := w.render(ctx)
	if err != nil {
		return false, err
	}
	if exists && bytes.Equal(old, content) {
		w.written = stamp(w.path)
		return false, nil
	}
	if err := w.write(content); err != nil {
		return false, err
	}
	w.log.Info("passwd-file written", "users", stats.users, "address_logins", stats.addresses, "skipped", stats.skipped, "cursor", st.Cursor)
	return true, nil
}

type renderStats struct{ users, addresses, skipped int }

// render returns the file's content.
func (w *Writer) render(ctx context.Context) ([]byte, renderStats, error) {
	var stats renderStats
	entries, err := w.dir.List(ctx, replica.KindUser)
	if err != nil {
		return nil, stats, fmt.Errorf("dovecotauth: listing users: %w", err)
	}
	type line struct{ name, hash, target string }
	var users []line
	for _, e := range entries {
		var u replica.User
		if err := replica.Decode(e, &u); err != nil {
			w.log.Warn("user entry skipped: unreadable", "user_id", e.ID, "err", err)
			stats.skipped++
			continue
		}
		if u.Site != w.site || !u.Enabled || u.PasswordHash == "" {
			continue
		}
		name := strings.ToLower(u.Username)
		if !validLogin(name) {
			w.log.Warn("user skipped: Dovecot cannot take the user name as a login", "user_id", e.ID, "username", u.Username)
			stats.skipped++
			continue
		}
		if err := passwd.CheckHash(u.PasswordHash); err != nil || strings.ContainsAny(u.PasswordHash, ":\r\n \t") {
			w.log.Warn("user skipped: unusable password hash", "user_id", e.ID, "username", name, "err", err)
			stats.skipped++
			continue
		}
		users = append(users, line{name: name, hash: u.PasswordHash, target: strings.ToLower(strings.TrimSpace(u.PrimaryAddress))})
	}
	slices.SortFunc(users, func(a, b line) int { return strings.Compare(a.name, b.name) })

	var b bytes.Buffer
	fmt.Fprintf(&b, "# Dovecot passwd-file of site %s, written by Postern's relay from the directory replica.\n", strings.NewReplacer("\n", " ", "\r", " ").Replace(w.site))
	b.WriteString("# Do not edit: it is replaced whenever the directory changes.\n")
	taken := map[string]bool{}
	for _, u := range users {
		if taken[u.name] {
			w.log.Warn("user skipped: duplicate user name", "username", u.name)
			stats.skipped++
			continue
		}
		taken[u.name] = true
		fmt.Fprintf(&b, "%s:%s::::::\n", u.name, u.hash)
		stats.users++
	}
	if w.cfg.LoginByAddress {
		for _, u := range users {
			addr := u.target
			if addr == "" || addr == u.name || !strings.Contains(addr, "@") {
				continue
			}
			if !validLogin(addr) || taken[addr] {
				w.log.Debug("no address login", "username", u.name, "address", addr)
				continue
			}
			taken[addr] = true
			fmt.Fprintf(&b, "%s:%s::::::user=%s\n", addr, u.hash, u.name)
			stats.addresses++
		}
	}
	return b.Bytes(), stats, nil
}

// validLogin reports whether Dovecot accepts name as a login with the
// default auth_username_chars, and the name can be a Maildir directory.
func validLogin(name string) bool {
	if name == "" || len(name) > 255 || name[0] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_' || c == '@') {
			return false
		}
	}
	return true
}

// write replaces the file with content atomically and durably, with a
// modification time later than the replaced file's.
func (w *Writer) write(content []byte) error {
	var written fileStamp
	// Created 0600, and opened to the group only once the group is
	// Dovecot's: no one else reads the hashes meanwhile.
	err := atomicfile.WriteFileWith(w.path, content, 0o600, func(f *os.File) error {
		if w.gid >= 0 {
			if err := f.Chown(-1, w.gid); err != nil {
				return err
			}
		}
		if err := f.Chmod(0o640); err != nil {
			return err
		}
		// Dovecot notices a new version by its modification time
		// (seconds) or size: make the time later than the old file's.
		mtime := w.now()
		if fi, err := os.Stat(w.path); err == nil {
			if prev := fi.ModTime().Truncate(time.Second); !mtime.Truncate(time.Second).After(prev) {
				mtime = prev.Add(time.Second)
			}
		}
		if err := os.Chtimes(f.Name(), mtime, mtime); err != nil {
			return err
		}
		// The stamp of what we wrote, taken before the rename (the
		// inode moves with it): once renamed, the file may already be
		// replaced.
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		written = fileStamp{ok: true, size: fi.Size(), modTime: fi.ModTime().UnixNano(), ino: inode(fi)}
		return nil
	})
	if err != nil {
		return fmt.Errorf("dovecotauth: writing %s: %w", w.path, err)
	}
	w.written = written
	return nil
}

// stamp identifies the file now on disk (ok false if it is missing).
func stamp(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{ok: true, size: fi.Size(), modTime: fi.ModTime().UnixNano(), ino: inode(fi)}
}

// Run keeps the file current until ctx ends: it syncs at once, then
// whenever the replica's sync cursor moves or the file on disk is not the
// one it wrote (removed or replaced), checking every PollInterval. Failed
// syncs are logged and retried at the next check. It returns nil when ctx
// ends.
func (w *Writer) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.PollInterval)
	defer t.Stop()
	cursor, synced := "", false
	for {
		st, err := w.dir.SyncState(ctx)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				w.log.Warn("reading the replica's sync state", "err", err)
			}
		case !synced || st.Cursor != cursor || w.fileReplaced():
			if _, err := w.Sync(ctx); err != nil {
				if ctx.Err() == nil {
					w.log.Error("passwd-file not updated", "err", err)
				}
				synced = false
			} else {
				cursor, synced = st.Cursor, true
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// fileReplaced reports whether the file on disk is not the one last
// written or checked.
func (w *Writer) fileReplaced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return stamp(w.path) != w.written
}
