package mailbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/config"
)

// MaildirConfig configures delivery straight into Maildirs.
type MaildirConfig struct {
	// Root holds one Maildir per user: the INBOX of user u is <Root>/<u>
	// with cur/, new/ and tmp/ (Dovecot: mail_location = maildir:<Root>/%u).
	Root string `yaml:"root" doc:"directory holding one Maildir per user, <root>/<username> (Dovecot: mail_location = maildir:<root>/%u)"`
	// Owner owns the Maildirs and messages Postern creates: "user",
	// "user:group" or "uid:gid". Empty: the relay's own user (which must
	// then be the user Dovecot accesses mail as).
	Owner string `yaml:"owner" doc:"user[:group] (names or numeric ids) owning the Maildirs and messages the relay writes, e.g. vmail (the user Dovecot accesses mail as); empty: the relay's own user"`
	// MarkerRetention is how long a delivery id is remembered after its
	// delivery (see Maildir). A redelivery after that would deliver again.
	MarkerRetention time.Duration `yaml:"marker_retention" doc:"how long delivered ids are remembered to drop duplicates (0: forever)"`
}

// Validate checks the settings; keys are relative ("root").
func (c MaildirConfig) Validate() error {
	var errs []error
	if c.Root == "" {
		errs = append(errs, config.Errorf("root", "must be set"))
	}
	if c.Owner != "" {
		if _, _, err := lookupOwner(c.Owner); err != nil {
			errs = append(errs, config.Errorf("owner", "%v", err))
		}
	}
	if c.MarkerRetention < 0 {
		errs = append(errs, config.Errorf("marker_retention", "must not be negative"))
	} else if c.MarkerRetention > 0 && c.MarkerRetention < time.Hour {
		errs = append(errs, config.Errorf("marker_retention", "%v: must be at least 1h (or 0 for forever)", c.MarkerRetention))
	}
	return config.Join(errs...)
}

// Maildir delivers into Maildirs the way Dovecot's own delivery agent does:
// the message (with the envelope fields prepended) is written to tmp/ under
// a unique name "<secs>.M<usecs>P<pid>Q<seq>R<random>.<host>,S=<size>",
// fsynced, renamed into new/, and new/ is fsynced. A missing Maildir is
// created (owned by MaildirConfig.Owner).
//
// Idempotency: for every delivery a marker file
// <Root>/.postern/delivered/<user>/<xx>/<sha256(DeliveryID)> is created and
// locked (flock) for the whole delivery, so concurrent deliveries of one id,
// in this process or another on the same host, run one after the other.
// Before the rename it records "P <file name>" (pending, fsynced); after the
// rename and the fsync of new/ it becomes "D <file name>" (delivered). A
// delivery that finds
//
//   - D: does nothing (the message was delivered, even if the user has
//     since read, moved or deleted it);
//   - P: a delivery died between writing the marker and finishing; it looks
//     for the file in new/ and cur/ (only in this rare case is cur/ read):
//     found, the marker becomes D and nothing is written; not found, the
//     rename never happened and the message is delivered again (a leftover
//     file in tmp/ is removed);
//   - nothing: delivers.
//
// The one window left: a crash after the rename but before D, followed by
// the user deleting or moving the message before the redelivery, delivers
// it a second time. The markers live outside the user's Maildir because
// Dovecot takes any dot-directory inside it for a folder; user names may
// not start with '.', so .postern cannot be a user's Maildir. Markers older
// than MarkerRetention are removed in the background (at most hourly).
type Maildir struct {
	root      string
	markers   string
	uid, gid  int // -1: leave ownership alone
	retention time.Duration
	host      string
	pid       int
	opts      Options
	log       *slog.Logger

	seq atomic.Uint64

	pruneMu   sync.Mutex
	lastPrune time.Time
	pruning   sync.WaitGroup
	stop      context.CancelFunc
	stopCtx   context.Context
	closed    atomic.Bool

	// failAt, if set, is called at the named stages of a delivery
	// ("pending": marker written, not renamed; "renamed": renamed, marker
	// not yet D); an error stops the delivery there, as a crash would.
	failAt func(stage string) error
}

var _ Deliverer = (*Maildir)(nil)

// markerDir is the directory below Root holding the idempotency markers.
const markerDir = ".postern/delivered"

// NewMaildir returns a Maildir deliverer writing below cfg.Root, which is
// created (mode 0711) if missing.
func NewMaildir(cfg MaildirConfig, opts Options) (*Maildir, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mailbox: maildir: %w", err)
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("mailbox: maildir root: %w", err)
	}
	m := &Maildir{
		root:      root,
		markers:   filepath.Join(root, markerDir),
		uid:       -1,
		gid:       -1,
		retention: cfg.MarkerRetention,
		pid:       os.Getpid(),
		opts:      opts,
		log:       opts.logger().With("component", "maildir"),
	}
	if cfg.Owner != "" {
		if m.uid, m.gid, err = lookupOwner(cfg.Owner); err != nil {
			return nil, fmt.Errorf("mailbox: maildir: %w", err)
		}
	}
	host := opts.Hostname
	if host == "" {
		if host, err = os.Hostname(); err != nil || host == "" {
			host = "localhost"
		}
	}
	// Maildir file names escape '/' and ':' (and ',' would confuse the
	// ",S=" field Dovecot parses) as \ooo.
	m.host = strings.NewReplacer("/", `\057`, ":", `\072`, ",", `\054`).Replace(host)

	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return nil, fmt.Errorf("mailbox: maildir root: %w", err)
	}
	created, err := m.mkdir(root, 0o711, true)
	if err != nil {
		return nil, fmt.Errorf("mailbox: maildir root: %w", err)
	}
	if fi, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("mailbox: maildir root: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("mailbox: maildir root %s is not a directory", root)
	}
	if created {
		if err := syncDir(filepath.Dir(root)); err != nil {
			return nil, fmt.Errorf("mailbox: maildir root: %w", err)
		}
	}
	if err := m.ensureDir(m.markers, 0o700, false); err != nil {
		return nil, fmt.Errorf("mailbox: maildir markers: %w", err)
	}
	m.stopCtx, m.stop = context.WithCancel(context.Background())
	return m, nil
}

// Close waits for a background marker clean-up to stop.
func (m *Maildir) Close() error {
	if m.closed.Swap(true) {
		return nil
	}
	m.stop()
	m.pruning.Wait()
	return nil
}

// UserMaildir returns the Maildir of username (not checking that it
// exists), or an error if the name cannot be a mailbox (see
// CanonicalUsername).
func (m *Maildir) UserMaildir(username string) (string, error) {
	name, err := CanonicalUsername(username)
	if err != nil {
		return "", err
	}
	return filepath.Join(m.root, name), nil
}

// Deliver writes msg into the Maildir of msg.Username (see Maildir).
func (m *Maildir) Deliver(ctx context.Context, msg Message) error {
	if m.closed.Load() {
		return errors.New("mailbox: maildir deliverer is closed")
	}
	name, err := checkMessage(msg)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.maybePrune()
	log := m.log.With("delivery_id", msg.DeliveryID, "user", name)

	dir := filepath.Join(m.root, name)
	if err := m.ensureMaildir(dir); err != nil {
		return fmt.Errorf("mailbox: maildir of %s: %w", name, err)
	}

	marker, err := m.lockMarker(ctx, name, msg.DeliveryID)
	if err != nil {
		return err
	}
	defer marker.Close() // releases the lock

	state, prev := readMarker(marker)
	switch state {
	case 'D':
		log.Info("duplicate delivery dropped", "file", prev)
		return nil
	case 'P':
		found, err := m.findDelivered(dir, prev)
		if err != nil {
			return fmt.Errorf("mailbox: recovering delivery %s for %s: %w", msg.DeliveryID, name, err)
		}
		if found {
			if err := markDone(marker); err != nil {
				return fmt.Errorf("mailbox: marker of delivery %s: %w", msg.DeliveryID, err)
			}
			log.Info("duplicate delivery dropped: found the file of an interrupted delivery", "file", prev)
			return nil
		}
		log.Warn("redelivering: an earlier delivery was interrupted before its rename", "file", prev)
		os.Remove(filepath.Join(dir, "tmp", prev))
	}

	hdr := envelopeHeader(msg, true)
	size := len(hdr) + len(msg.Data)
	file := m.uniqueName(size)
	tmp := filepath.Join(dir, "tmp", file)
	if err := m.writeFile(tmp, hdr, msg.Data); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mailbox: writing message for %s: %w", name, err)
	}
	if err := writeMarker(marker, "P "+file+"\n"); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mailbox: marker of delivery %s: %w", msg.DeliveryID, err)
	}
	if err := m.fail("pending"); err != nil {
		return err
	}
	dst := filepath.Join(dir, "new", file)
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mailbox: delivering message for %s: %w", name, err)
	}
	if err := syncDir(filepath.Join(dir, "new")); err != nil {
		// The file is in new/ but may not survive a power loss; the
		// marker still says P, so a redelivery checks for it.
		return fmt.Errorf("mailbox: syncing new/ of %s: %w", name, err)
	}
	if err := m.fail("renamed"); err != nil {
		return err
	}
	if err := markDone(marker); err != nil {
		// Delivered; a redelivery finds the file through the P marker.
		log.Warn("message delivered but its marker not updated", "err", err)
	}
	log.Info("delivered", "file", file, "size_bytes", size)
	return nil
}

func (m *Maildir) fail(stage string) error {
	if m.failAt == nil {
		return nil
	}
	return m.failAt(stage)
}

// uniqueName returns a new Maildir file name for a message of size bytes.
func (m *Maildir) uniqueName(size int) string {
	now := m.opts.now()
	var r [4]byte
	rand.Read(r[:])
	return fmt.Sprintf("%d.M%dP%dQ%dR%08x.%s,S=%d", now.Unix(), now.Nanosecond()/1000, m.pid,
		m.seq.Add(1), binary.BigEndian.Uint32(r[:]), m.host, size)
}

// writeFile writes hdr and data to a new file at path, owned by the owner,
// and fsyncs it.
func (m *Maildir) writeFile(path string, hdr, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = m.chown(f.Name(), f)
	if err == nil {
		_, err = f.Write(hdr)
	}
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (m *Maildir) chown(path string, f *os.File) error {
	if m.uid < 0 {
		return nil
	}
	if f != nil {
		return f.Chown(m.uid, m.gid)
	}
	return os.Chown(path, m.uid, m.gid)
}

// ensureMaildir creates dir with cur/, new/ and tmp/ where missing.
func (m *Maildir) ensureMaildir(dir string) error {
	created, err := m.mkdir(dir, 0o700, true)
	if err != nil {
		return err
	}
	if created {
		if err := syncDir(m.root); err != nil {
			return err
		}
	}
	made := false
	for _, sub := range []string{"cur", "new", "tmp"} {
		c, err := m.mkdir(filepath.Join(dir, sub), 0o700, true)
		if err != nil {
			return err
		}
		made = made || c
	}
	if made {
		return syncDir(dir)
	}
	return nil
}

// mkdir creates dir (its parent must exist) and reports whether it did;
// owned means it is given to the mail owner.
func (m *Maildir) mkdir(dir string, perm os.FileMode, owned bool) (bool, error) {
	err := os.Mkdir(dir, perm)
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if owned {
		if err := m.chown(dir, nil); err != nil {
			return true, err
		}
	}
	return true, nil
}

// ensureDir creates dir and its missing parents durably (each new
// directory's parent is fsynced).
func (m *Maildir) ensureDir(dir string, perm os.FileMode, owned bool) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := m.ensureDir(parent, perm, owned); err != nil {
			return err
		}
	}
	created, err := m.mkdir(dir, perm, owned)
	if err != nil {
		return err
	}
	if created {
		return syncDir(parent)
	}
	return nil
}

// markerPath is the marker of delivery id for the user name.
func (m *Maildir) markerPath(name, id string) string {
	sum := sha256.Sum256([]byte(id))
	h := hex.EncodeToString(sum[:])
	return filepath.Join(m.markers, name, h[:2], h)
}

// lockMarker opens (creating it durably) the marker of id and takes an
// exclusive lock on it, waiting while another delivery of the id holds it,
// until ctx ends.
func (m *Maildir) lockMarker(ctx context.Context, name, id string) (*os.File, error) {
	path := m.markerPath(name, id)
	if err := m.ensureDir(filepath.Dir(path), 0o700, false); err != nil {
		return nil, fmt.Errorf("mailbox: marker directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		if err := syncDir(filepath.Dir(path)); err != nil {
			f.Close()
			return nil, fmt.Errorf("mailbox: marker: %w", err)
		}
	} else if errors.Is(err, fs.ErrExist) {
		f, err = os.OpenFile(path, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("mailbox: marker: %w", err)
	}
	wait := time.Millisecond
	for {
		locked, err := tryLock(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("mailbox: locking marker: %w", err)
		}
		if locked {
			return f, nil
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("mailbox: waiting for another delivery of %s: %w", id, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// readMarker returns the marker's state ('D', 'P' or 0 for none or
// unreadable) and the file name it records.
func readMarker(f *os.File) (byte, string) {
	buf := make([]byte, 1024)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, ""
	}
	line, ok := bytes.CutSuffix(buf[:n], []byte("\n"))
	if !ok || len(line) < 3 || line[1] != ' ' || (line[0] != 'D' && line[0] != 'P') {
		return 0, ""
	}
	file := string(line[2:])
	if strings.ContainsAny(file, "/\x00") || file == "." || file == ".." {
		return 0, ""
	}
	return line[0], file
}

// writeMarker replaces the marker's content and fsyncs it.
func writeMarker(f *os.File, content string) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte(content), 0); err != nil {
		return err
	}
	return f.Sync()
}

// markDone turns "P name" into "D name" by rewriting its first byte (one
// byte cannot be torn).
func markDone(f *os.File) error {
	if _, err := f.WriteAt([]byte{'D'}, 0); err != nil {
		return err
	}
	return f.Sync()
}

// findDelivered reports whether the file named file is in new/ or (maybe
// with Dovecot's ":2,<flags>" info) in cur/ of the Maildir dir.
func (m *Maildir) findDelivered(dir, file string) (bool, error) {
	for _, p := range []string{filepath.Join(dir, "new", file), filepath.Join(dir, "cur", file)} {
		if _, err := os.Lstat(p); err == nil {
			return true, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	d, err := os.Open(filepath.Join(dir, "cur"))
	if err != nil {
		return false, err
	}
	defer d.Close()
	for {
		names, err := d.Readdirnames(1024)
		for _, n := range names {
			if strings.HasPrefix(n, file+":") {
				return true, nil
			}
		}
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// maybePrune starts a background removal of old markers at most once an
// hour.
func (m *Maildir) maybePrune() {
	if m.retention <= 0 {
		return
	}
	m.pruneMu.Lock()
	defer m.pruneMu.Unlock()
	now := m.opts.now()
	if !m.lastPrune.IsZero() && now.Sub(m.lastPrune) < time.Hour {
		return
	}
	m.lastPrune = now
	m.pruning.Add(1)
	go func() {
		defer m.pruning.Done()
		defer func() {
			if r := recover(); r != nil {
				m.log.Error("marker clean-up panicked", "panic", fmt.Sprint(r))
			}
		}()
		n, err := m.PruneMarkers(m.stopCtx, now.Add(-m.retention))
		if err != nil && !errors.Is(err, context.Canceled) {
			m.log.Warn("removing old delivery markers", "err", err, "removed", n)
		} else if n > 0 {
			m.log.Info("removed old delivery markers", "removed", n)
		}
	}()
}

// PruneMarkers removes the delivery markers last written before cutoff and
// returns how many it removed. A delivery redelivered after its marker is
// gone is delivered again. Deliver calls it in the background (at most
// hourly) with MarkerRetention.
func (m *Maildir) PruneMarkers(ctx context.Context, cutoff time.Time) (int, error) {
	removed := 0
	err := filepath.WalkDir(m.markers, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if fi.ModTime().Before(cutoff) {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			removed++
		}
		return nil
	})
	return removed, err
}

// syncDir fsyncs a directory, making the entries created or renamed in it
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
