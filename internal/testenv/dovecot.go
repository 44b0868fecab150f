package testenv

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// DovecotUser is a mail account of a test Dovecot instance. The password is
// stored in the instance's passwd-file as {SHA512-CRYPT}, never in plain.
type DovecotUser struct {
	Username string // e.g. "alice@example.test"; Dovecot lowercases it (auth_username_format = %Lu)
	Password string
}

// DovecotOptions configures StartDovecot. The zero value is a plaintext-only
// instance (POP3, IMAP, LMTP) without users, mail in a fresh temporary
// directory, and plaintext authentication allowed.
type DovecotOptions struct {
	// Users get a passwd-file entry (unless PassdbCheckpassword is set) and
	// an empty Maildir created before Dovecot starts.
	Users []DovecotUser

	// MailDir is the root of all mailboxes: the INBOX of user u is the
	// Maildir MailDir/u (see DovecotServer.UserMaildir). Default: t.TempDir().
	// It is chowned to the mail user (DovecotServer.MailUID) and its ancestors
	// below the temporary directory get o+x so that user can reach it.
	MailDir string

	// TLS also serves POP3S and IMAPS (implicit TLS) and enables STLS and
	// STARTTLS, with a self-signed certificate for 127.0.0.1 and localhost
	// (DovecotServer.CertPEM, DovecotServer.TLSConfig).
	TLS bool

	// DisablePlaintextAuth sets disable_plaintext_auth = yes: USER/PASS,
	// LOGIN and AUTH PLAIN then need TLS. Beware: Dovecot treats a client
	// whose IP equals the server's (127.0.0.1 → 127.0.0.1) as secure and
	// lets it log in anyway; use DialUntrusted to see the refusal.
	// The default (false) allows plaintext authentication.
	DisablePlaintextAuth bool

	// PassdbCheckpassword, if set, is the path of a checkpassword program
	// used as the passdb instead of the passwd-file (Users' passwords are
	// then ignored; their Maildirs are still created). Dovecot's auth
	// process runs it (as root, or as the test's user when not root) with
	// "user\0password\0timestamp\0" on fd 3 and the path of
	// checkpassword-reply as argv[1]: on success the program execs argv[1]
	// (extra fields may be passed in its environment), otherwise it exits
	// 1 (wrong password) or 111 (temporary failure); see
	// https://doc.dovecot.org/2.3/configuration_manual/authentication/checkpassword/.
	// Because a checkpassword passdb cannot tell whether a user exists
	// without a password, the userdb then accepts every user: LMTP
	// delivers to any recipient.
	PassdbCheckpassword string

	// PasswdFile, if set, is the path of a passwd-file used as the passdb
	// instead of the one generated from Users (whose passwords are then
	// ignored; their Maildirs are still created). Lines are
	// "user:{SCHEME}hash::::::[extra fields]", e.g. what Postern's relay
	// writes from the directory replica (services/relay/internal/dovecotauth).
	// Dovecot re-reads the file when its modification time or size changes
	// (checked at most once a second). Ignored with PassdbCheckpassword.
	PasswdFile string

	// ExtraConfig is appended to the generated configuration as it is, e.g.
	// "lmtp_hdr_delivery_address = none\n". Settings given here override
	// the generated ones of the same name.
	ExtraConfig string
}

// DovecotServer is a private Dovecot instance started by StartDovecot. All
// addresses are on 127.0.0.1; POP3SAddr and IMAPSAddr are empty without TLS.
type DovecotServer struct {
	POP3Addr  string
	POP3SAddr string
	IMAPAddr  string
	IMAPSAddr string
	LMTPAddr  string

	// MailDir is the root of the mailboxes (see UserMaildir).
	MailDir string

	// CertPEM is the PEM of the self-signed certificate served with TLS
	// (nil without TLS). It is its own CA: put it in a pool of roots.
	CertPEM []byte

	// MailUID and MailGID are the owner Dovecot's mail processes run as
	// (the "dovecot" user when the tests run as root: Dovecot refuses to
	// access mail as root). Files written into a Maildir by someone else
	// must be readable by this user.
	MailUID, MailGID int

	// Dir holds the instance's files: dovecot.conf, passwd, dovecot.log,
	// dovecot.stderr, cert.pem/key.pem, run/ (base_dir: sockets, pid file)
	// and state/ (state_dir). It is t.TempDir() unless that path is too long
	// for sockets or unfit for the configuration (then a directory of its own
	// under $TMPDIR, also removed when the test ends).
	Dir        string
	ConfigPath string

	logPath    string
	stderrPath string

	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
	stopNote string // set when the group needed SIGKILL (not an error)
	stopErr  error
}

// dovecotStartTimeout bounds how long StartDovecot waits for all listeners
// to greet.
const dovecotStartTimeout = 20 * time.Second

// StartDovecot starts a private Dovecot (dovecot -F -c FILE) configured by
// opts, listening only on 127.0.0.1 on free ports, and waits until every
// listener greets. The instance is stopped in t.Cleanup. If dovecot is not
// installed the test fails in CI and is skipped elsewhere; if it does not
// start, the test fails with Dovecot's log.
//
// Run as root (as CI does), the master and auth run as root, logins as
// dovenull and mail access as the dovecot user (MailUID). Run as another
// user, everything runs as that user.
func StartDovecot(t testing.TB, opts DovecotOptions) *DovecotServer {
	t.Helper()
	bin := Dovecot(t)

	ids, err := dovecotIdentities()
	if err != nil {
		unavailable(t, "dovecot: %v", err)
	}

	// Unix socket paths are limited to 107 bytes; the deepest socket Dovecot
	// creates in base_dir (Dir/run) is about 30 bytes below Dir.
	d := &DovecotServer{Dir: configTempDir(t, 70), MailUID: ids.mailUID, MailGID: ids.mailGID}
	d.ConfigPath = filepath.Join(d.Dir, "dovecot.conf")
	d.logPath = filepath.Join(d.Dir, "dovecot.log")
	d.stderrPath = filepath.Join(d.Dir, "dovecot.stderr")
	baseDir := filepath.Join(d.Dir, "run")

	d.MailDir = opts.MailDir
	if d.MailDir == "" {
		d.MailDir = configTempDir(t, 1000)
	}
	if d.MailDir, err = filepath.Abs(d.MailDir); err != nil {
		t.Fatalf("testenv: dovecot MailDir: %v", err)
	}
	if opts.PasswdFile != "" {
		if opts.PasswdFile, err = filepath.Abs(opts.PasswdFile); err != nil {
			t.Fatalf("testenv: dovecot PasswdFile: %v", err)
		}
	}
	for _, p := range []string{d.MailDir, opts.PassdbCheckpassword, opts.PasswdFile} {
		if err := checkConfigPath(p); err != nil {
			t.Fatalf("testenv: dovecot: %v", err)
		}
	}

	if err := os.MkdirAll(d.MailDir, 0o755); err != nil {
		t.Fatalf("testenv: dovecot MailDir: %v", err)
	}
	if err := makeReachable(d.MailDir, ids.mailUID); err != nil {
		t.Fatalf("testenv: dovecot MailDir: %v", err)
	}
	if err := os.Chown(d.MailDir, ids.mailUID, ids.mailGID); err != nil {
		t.Fatalf("testenv: dovecot MailDir: %v", err)
	}

	var passwd strings.Builder
	for _, u := range opts.Users {
		name := dovecotUsername(u.Username)
		if err := checkUsername(name); err != nil {
			t.Fatalf("testenv: dovecot: %v", err)
		}
		fmt.Fprintf(&passwd, "%s:{SHA512-CRYPT}%s::::::\n", name, SHA512Crypt(u.Password))
		d.MakeMaildir(t, name)
	}
	passwdPath := opts.PasswdFile
	if passwdPath == "" {
		passwdPath = filepath.Join(d.Dir, "passwd")
		if err := os.WriteFile(passwdPath, []byte(passwd.String()), 0o600); err != nil {
			t.Fatalf("testenv: dovecot passwd-file: %v", err)
		}
	}

	var certPath, keyPath string
	if opts.TLS {
		certPEM, keyPEM, err := selfSignedCert()
		if err != nil {
			t.Fatalf("testenv: dovecot certificate: %v", err)
		}
		d.CertPEM = certPEM
		certPath = filepath.Join(d.Dir, "cert.pem")
		keyPath = filepath.Join(d.Dir, "key.pem")
		if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
			t.Fatalf("testenv: dovecot certificate: %v", err)
		}
		if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
			t.Fatalf("testenv: dovecot certificate: %v", err)
		}
	}

	// Ports are found by binding 127.0.0.1:0 and closing; another process
	// may take one before Dovecot binds it, so a start that fails with
	// "Address already in use" is retried with new ports.
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("testenv: stopping dovecot: %v", err)
		}
		if d.stopNote != "" {
			t.Logf("testenv: %s", d.stopNote)
		}
	})
	const attempts = 3
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(5)
		if err != nil {
			t.Fatalf("testenv: dovecot ports: %v", err)
		}
		addr := func(i int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i])) }
		d.POP3Addr, d.IMAPAddr, d.LMTPAddr = addr(0), addr(1), addr(2)
		d.POP3SAddr, d.IMAPSAddr = "", ""
		if opts.TLS {
			d.POP3SAddr, d.IMAPSAddr = addr(3), addr(4)
		}
		conf := dovecotConfig(configParams{
			testName:   t.Name(),
			ids:        ids,
			baseDir:    baseDir,
			stateDir:   filepath.Join(d.Dir, "state"),
			logPath:    d.logPath,
			mailDir:    d.MailDir,
			passwdPath: passwdPath,
			checkpw:    opts.PassdbCheckpassword,
			certPath:   certPath,
			keyPath:    keyPath,
			noPlain:    opts.DisablePlaintextAuth,
			ports:      ports,
			tls:        opts.TLS,
			extra:      opts.ExtraConfig,
		})
		if err := os.WriteFile(d.ConfigPath, []byte(conf), 0o644); err != nil {
			t.Fatalf("testenv: dovecot config: %v", err)
		}
		os.Remove(d.logPath)
		os.RemoveAll(filepath.Join(d.Dir, "state"))

		err = d.start(bin)
		if err == nil {
			if err = d.waitReady(dovecotStartTimeout); err == nil {
				return d
			}
		}
		d.Stop()
		log := d.Log()
		if strings.Contains(log, "Address already in use") && attempt < attempts {
			t.Logf("testenv: dovecot: a port was taken (%v); retrying with new ports", err)
			d.stopOnce = sync.Once{}
			continue
		}
		if missing := missingDovecotPart(log); missing != "" {
			unavailable(t, "dovecot is installed without %s (install dovecot-pop3d dovecot-imapd dovecot-lmtpd):\n%s", missing, log)
		}
		t.Fatalf("testenv: dovecot (%s -F -c %s) did not start: %v\n--- dovecot log ---\n%s", bin, d.ConfigPath, err, log)
	}
}

// UserMaildir is the Maildir holding the INBOX of username:
// MailDir/<username in lower case>, with the usual cur/, new/ and tmp/ (and
// Dovecot's dovecot* index files, which a writer must leave alone). To
// deliver, write the message to tmp/ under a unique name, then rename it into
// new/; the file must be readable by MailUID (e.g. mode 0644, or chown).
func (d *DovecotServer) UserMaildir(username string) string {
	return filepath.Join(d.MailDir, dovecotUsername(username))
}

// MakeMaildir creates the Maildir of username (the directory and its cur/,
// new/ and tmp/) unless they exist, gives them to the mail user, and returns
// the Maildir's path. StartDovecot does this for DovecotOptions.Users.
// Dovecot creates other users' Maildirs itself on first access, but one
// created by someone else (e.g. root, mode 0700) is unusable by Dovecot: call
// this first.
func (d *DovecotServer) MakeMaildir(t testing.TB, username string) string {
	t.Helper()
	if err := checkUsername(dovecotUsername(username)); err != nil {
		t.Fatalf("testenv: dovecot: %v", err)
	}
	dir := d.UserMaildir(username)
	for _, p := range []string{dir, filepath.Join(dir, "cur"), filepath.Join(dir, "new"), filepath.Join(dir, "tmp")} {
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatalf("testenv: dovecot maildir: %v", err)
		}
		if err := os.Chown(p, d.MailUID, d.MailGID); err != nil {
			t.Fatalf("testenv: dovecot maildir: %v", err)
		}
	}
	return dir
}

var deliverSeq struct {
	sync.Mutex
	n int
}

// DeliverToMaildir writes msg into the INBOX of username the way a Maildir
// delivery agent does (tmp/ then rename into new/), owned by the mail user,
// and returns the path of the new file. It creates the Maildir if needed.
func (d *DovecotServer) DeliverToMaildir(t testing.TB, username string, msg []byte) string {
	t.Helper()
	dir := d.MakeMaildir(t, username)
	deliverSeq.Lock()
	deliverSeq.n++
	n := deliverSeq.n
	deliverSeq.Unlock()
	now := time.Now()
	name := fmt.Sprintf("%d.M%dP%dQ%d.testenv", now.Unix(), now.Nanosecond()/1000, os.Getpid(), n)
	tmp := filepath.Join(dir, "tmp", name)
	if err := os.WriteFile(tmp, msg, 0o600); err != nil {
		t.Fatalf("testenv: maildir delivery: %v", err)
	}
	if err := os.Chown(tmp, d.MailUID, d.MailGID); err != nil {
		t.Fatalf("testenv: maildir delivery: %v", err)
	}
	dst := filepath.Join(dir, "new", name)
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatalf("testenv: maildir delivery: %v", err)
	}
	return dst
}

// Log returns what the instance logged (dovecot.log, preceded by anything
// dovecot wrote to stderr before its log was set up), for failure messages.
func (d *DovecotServer) Log() string {
	var b strings.Builder
	if out, err := os.ReadFile(d.stderrPath); err == nil && len(out) > 0 {
		b.WriteString("[stderr]\n")
		b.Write(out)
		if out[len(out)-1] != '\n' {
			b.WriteByte('\n')
		}
		b.WriteString("[dovecot.log]\n")
	}
	out, err := os.ReadFile(d.logPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(&b, "(reading %s: %v)\n", d.logPath, err)
	}
	b.Write(out)
	return b.String()
}

// TLSConfig returns a client configuration that trusts only CertPEM, for
// the name localhost (the certificate also covers the IP 127.0.0.1).
// It returns nil without TLS.
func (d *DovecotServer) TLSConfig() *tls.Config {
	if d.CertPEM == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(d.CertPEM)
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// DialUntrusted connects to addr (on 127.0.0.1) from 127.0.0.2. Dovecot
// counts a client whose IP equals the local IP of the connection as secure,
// so from 127.0.0.1 plaintext authentication is allowed even with
// disable_plaintext_auth = yes; from 127.0.0.2 it is not.
func DialUntrusted(addr string) (net.Conn, error) {
	d := net.Dialer{
		Timeout:   5 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)},
	}
	return d.Dial("tcp", addr)
}

// Stop stops the instance: SIGTERM to the process group led by the dovecot
// master it started (the master alone takes a second to shut down, and
// logged-in imap/pop3 processes outlive it), SIGKILL after a bounded wait.
// It is called by t.Cleanup and may be called earlier, e.g. to test what
// happens when Dovecot is down.
func (d *DovecotServer) Stop() error {
	d.stopOnce.Do(func() {
		if d.cmd == nil || d.cmd.Process == nil {
			return
		}
		pid := d.cmd.Process.Pid
		gone := func() bool {
			select {
			case <-d.exited:
				return !groupAlive(pid)
			default:
				return false
			}
		}
		waitGone := func(timeout time.Duration) bool {
			for deadline := time.Now().Add(timeout); !gone(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					return false
				}
			}
			return true
		}
		signalGroup(pid, false)
		if waitGone(5 * time.Second) {
			return
		}
		// Seen now and then: the master waits for its anvil process,
		// which hangs on a socket read. The instance is private to the
		// test, so killing it loses nothing; the test is told, not failed.
		d.stopNote = fmt.Sprintf("dovecot (process group %d) did not stop within 5s of SIGTERM; sent SIGKILL", pid)
		signalGroup(pid, true)
		if !waitGone(5 * time.Second) {
			d.stopErr = fmt.Errorf("dovecot (process group %d) survived SIGKILL for 5s", pid)
		}
	})
	return d.stopErr
}

func (d *DovecotServer) start(bin string) error {
	stderr, err := os.Create(d.stderrPath)
	if err != nil {
		return err
	}
	defer stderr.Close()
	cmd := exec.Command(bin, "-F", "-c", d.ConfigPath)
	cmd.Dir = d.Dir
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.SysProcAttr = newProcessGroupAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	d.cmd = cmd
	d.exited = make(chan struct{})
	go func() {
		cmd.Wait()
		close(d.exited)
	}()
	return nil
}

// waitReady waits until every listener has sent its greeting (TLS ones
// after a verified handshake), or dovecot exits, or timeout passes.
func (d *DovecotServer) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	type listener struct {
		name, addr, greeting string
		tls                  bool
	}
	ls := []listener{
		{"pop3", d.POP3Addr, "+OK", false},
		{"imap", d.IMAPAddr, "* OK", false},
		{"lmtp", d.LMTPAddr, "220 ", false},
	}
	if d.CertPEM != nil {
		ls = append(ls, listener{"pop3s", d.POP3SAddr, "+OK", true}, listener{"imaps", d.IMAPSAddr, "* OK", true})
	}
	for _, l := range ls {
		var lastErr error
		for {
			select {
			case <-d.exited:
				return fmt.Errorf("dovecot exited (%v) before %s on %s was ready", d.cmd.ProcessState, l.name, l.addr)
			default:
			}
			var tlsConf *tls.Config
			if l.tls {
				tlsConf = d.TLSConfig()
			}
			lastErr = greet(ctx, l.addr, l.greeting, tlsConf)
			if lastErr == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s on %s not ready after %v: %v", l.name, l.addr, timeout, lastErr)
			case <-d.exited:
			case <-time.After(25 * time.Millisecond):
			}
		}
	}
	return nil
}

func greet(ctx context.Context, addr, want string, tlsConf *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if tlsConf != nil {
		tc := tls.Client(c, tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		c = tc
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, want) {
		return fmt.Errorf("greeting %q, want one starting with %q", strings.TrimSpace(line), want)
	}
	return nil
}

// missingDovecotPart names the protocol package missing according to a
// failed start's log, if that is why it failed.
func missingDovecotPart(log string) string {
	for _, p := range []string{"pop3", "imap", "lmtp"} {
		if strings.Contains(log, "/"+p+") failed: No such file") || strings.Contains(log, "/"+p+"-login) failed: No such file") {
			return p
		}
	}
	return ""
}

type dovecotIDs struct {
	root             bool
	internalUser     string // default_internal_user
	internalGroup    string // default_internal_group; "" for Dovecot's default
	loginUser        string // default_login_user
	mailUser         string
	mailUID, mailGID int
}

// dovecotIdentities picks the users Dovecot runs as. As root: the Debian
// package's dovecot and dovenull, with mail accessed as dovecot (Dovecot
// refuses uid 0 for mail access). Otherwise: the current user for all.
func dovecotIdentities() (dovecotIDs, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return dovecotIDs{}, err
		}
		g, err := user.LookupGroupId(strconv.Itoa(os.Getegid()))
		if err != nil {
			return dovecotIDs{}, err
		}
		return dovecotIDs{
			internalUser: u.Username, internalGroup: g.Name, loginUser: u.Username, mailUser: u.Username,
			mailUID: os.Geteuid(), mailGID: os.Getegid(),
		}, nil
	}
	ids := dovecotIDs{root: true, internalUser: "dovecot", loginUser: "dovenull", mailUser: "dovecot"}
	for _, name := range []string{ids.internalUser, ids.loginUser} {
		if _, err := user.Lookup(name); err != nil {
			return ids, fmt.Errorf("user %s, which Dovecot runs as, does not exist (it comes with dovecot-core): %v", name, err)
		}
	}
	u, _ := user.Lookup(ids.mailUser)
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return ids, fmt.Errorf("user %s: %v", ids.mailUser, err)
	}
	ids.mailUID, ids.mailGID = uid, gid
	return ids, nil
}

// dovecotUsername is the name Dovecot uses for a login name: with the
// default auth_username_format = %Lu, the name in ASCII lower case.
func dovecotUsername(name string) string {
	b := []byte(name)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// checkUsername rejects names that do not fit in the passwd-file or would
// not name a directory directly below MailDir.
func checkUsername(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, ":/\\\n\r\t\x00%") {
		return fmt.Errorf("invalid username %q", name)
	}
	return nil
}

// checkConfigPath rejects paths that the generated configuration could not
// carry unchanged: Dovecot splits passdb/userdb args at spaces, expands % in
// them, treats # as a comment and $ as a setting reference.
func checkConfigPath(p string) error {
	for _, c := range p {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.ContainsRune("/._-+@,=~", c):
		default:
			return fmt.Errorf("path %q contains %q, which the Dovecot configuration cannot carry; use a simpler path (or test name)", p, c)
		}
	}
	return nil
}

// configTempDir returns t.TempDir() if its path can go into the Dovecot
// configuration (see checkConfigPath) and is at most maxLen bytes long, and
// otherwise a new directory in the system's temporary directory (or /tmp),
// removed in t.Cleanup: test names may make paths long or put '#' (as in
// "TestX/case#01") or '%' in them.
func configTempDir(t testing.TB, maxLen int) string {
	t.Helper()
	if dir := t.TempDir(); len(dir) <= maxLen && checkConfigPath(dir) == nil {
		return dir
	}
	for _, parent := range []string{os.TempDir(), "/tmp"} {
		dir, err := os.MkdirTemp(parent, "postern-dovecot-")
		if err != nil {
			continue
		}
		if len(dir) <= maxLen && checkConfigPath(dir) == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
		os.Remove(dir)
	}
	t.Fatalf("testenv: no temporary directory with a path Dovecot can use (at most %d bytes of [A-Za-z0-9/._-+@,=~]); set TMPDIR", maxLen)
	return ""
}

// makeReachable gives "others" search (x) permission on dir and those of its
// ancestors that lack it, so that uid can reach dir. It only changes
// directories below the temporary directory; elsewhere it reports an error.
func makeReachable(dir string, uid int) error {
	if uid == os.Geteuid() {
		return nil
	}
	var roots []string
	for _, r := range []string{os.TempDir(), os.Getenv("GOTMPDIR"), "/tmp"} {
		if r == "" {
			continue
		}
		if r, err := filepath.EvalSymlinks(r); err == nil {
			roots = append(roots, r)
		}
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	for p := real; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			below := false
			for _, r := range roots {
				if strings.HasPrefix(p, r+string(filepath.Separator)) {
					below = true
				}
			}
			if !below {
				return fmt.Errorf("%s is not searchable by others, so Dovecot's mail user (uid %d) cannot reach %s; choose a MailDir below %s", p, uid, dir, os.TempDir())
			}
			if err := os.Chmod(p, fi.Mode().Perm()|0o001); err != nil {
				return err
			}
		}
		if parent := filepath.Dir(p); parent == p {
			return nil
		}
	}
}

// freePorts returns n distinct ports that were free on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// selfSignedCert returns a self-signed ECDSA P-256 certificate (its own CA)
// for localhost and 127.0.0.1, valid from an hour ago for a day, and its key.
func selfSignedCert() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"Postern testenv Dovecot"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

type configParams struct {
	testName                     string
	ids                          dovecotIDs
	baseDir, stateDir, logPath   string
	mailDir, passwdPath, checkpw string
	certPath, keyPath            string
	noPlain, tls                 bool
	ports                        []int // pop3, imap, lmtp, pop3s, imaps
	extra                        string
}

// dovecotConfig renders the instance's complete configuration. It includes
// nothing from /etc/dovecot.
func dovecotConfig(p configParams) string {
	yesno := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# Private Dovecot instance for %s, generated by postern internal/testenv.", strings.NewReplacer("\n", " ").Replace(p.testName))
	w("# Started as: dovecot -F -c <this file>. Nothing is read from /etc/dovecot.")
	w("instance_name = postern-testenv")
	w("base_dir = %s", p.baseDir)
	w("state_dir = %s", p.stateDir)
	w("log_path = %s", p.logPath)
	w("protocols = pop3 imap lmtp")
	w("listen = 127.0.0.1")
	w("shutdown_clients = yes")
	w("")
	w("default_internal_user = %s", p.ids.internalUser)
	if p.ids.internalGroup != "" {
		w("default_internal_group = %s", p.ids.internalGroup)
	}
	w("default_login_user = %s", p.ids.loginUser)
	w("# Mail is accessed as %s (uid %d): Dovecot refuses uid 0 for mail.", p.ids.mailUser, p.ids.mailUID)
	w("mail_uid = %d", p.ids.mailUID)
	w("mail_gid = %d", p.ids.mailGID)
	w("first_valid_uid = 1")
	w("first_valid_gid = %d", min(p.ids.mailGID, 1))
	w("# The INBOX of user u is the Maildir %s/u (cur/ new/ tmp/); u's home is the same directory.", p.mailDir)
	w("mail_location = maildir:%s/%%u", p.mailDir)
	w("mail_max_userip_connections = 1000")
	w("pop3_uidl_format = %%08Xu%%08Xv")
	w("")
	w("disable_plaintext_auth = %s", yesno(p.noPlain))
	w("auth_mechanisms = plain login")
	w("auth_verbose = yes")
	w("# No delays after failed logins: neither the fixed one nor the growing")
	w("# per-IP penalty (up to 15s), which Dovecot disables when anvil's")
	w("# anvil-auth-penalty socket does not exist.")
	w("auth_failure_delay = 0")
	w("service anvil {")
	w("  unix_listener anvil-auth-penalty {")
	w("    mode = 0")
	w("  }")
	if !p.ids.root {
		w("  chroot =")
	}
	w("}")
	if p.checkpw != "" {
		w("# The userdb's uid/gid also override the userdb_uid=0 that")
		w("# checkpassword-reply reports when run by a root auth process.")
		w("passdb {")
		w("  driver = checkpassword")
		w("  args = %s", p.checkpw)
		w("}")
		w("userdb {")
		w("  driver = static")
		w("  args = uid=%d gid=%d home=%s/%%u allow_all_users=yes", p.ids.mailUID, p.ids.mailGID, p.mailDir)
		w("}")
	} else {
		w("passdb {")
		w("  driver = passwd-file")
		w("  args = scheme=SHA512-CRYPT %s", p.passwdPath)
		w("}")
		w("# static userdb: a user exists if the passdb knows it (allow_all_users = no).")
		w("userdb {")
		w("  driver = static")
		w("  args = uid=%d gid=%d home=%s/%%u", p.ids.mailUID, p.ids.mailGID, p.mailDir)
		w("}")
	}
	w("")
	if p.tls {
		w("ssl = yes")
		w("ssl_cert = <%s", p.certPath)
		w("ssl_key = <%s", p.keyPath)
	} else {
		w("ssl = no")
	}
	w("")
	if p.ids.root {
		w("# auth runs as root so that it can read the passwd-file and run a")
		w("# checkpassword program wherever the test put them.")
		w("service auth {")
		w("  user = root")
		w("}")
	} else {
		w("# Not started as root: no chroots, everything runs as %s.", p.ids.internalUser)
		for _, s := range []string{"imap-login", "pop3-login"} {
			w("service %s {", s)
			w("  chroot =")
			w("}")
		}
	}
	port := func(i int) int {
		if !p.tls && i >= 3 {
			return 0
		}
		return p.ports[i]
	}
	w("service pop3-login {")
	w("  inet_listener pop3 {")
	w("    address = 127.0.0.1")
	w("    port = %d", port(0))
	w("  }")
	w("  inet_listener pop3s {")
	w("    address = 127.0.0.1")
	w("    port = %d", port(3))
	w("    ssl = yes")
	w("  }")
	w("}")
	w("service imap-login {")
	w("  inet_listener imap {")
	w("    address = 127.0.0.1")
	w("    port = %d", port(1))
	w("  }")
	w("  inet_listener imaps {")
	w("    address = 127.0.0.1")
	w("    port = %d", port(4))
	w("    ssl = yes")
	w("  }")
	w("}")
	w("service lmtp {")
	w("  inet_listener lmtp {")
	w("    address = 127.0.0.1")
	w("    port = %d", port(2))
	w("  }")
	w("}")
	if p.extra != "" {
		w("")
		w("# DovecotOptions.ExtraConfig")
		b.WriteString(p.extra)
		if !strings.HasSuffix(p.extra, "\n") {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// ErrLoginRefused is matched (errors.Is) by the error IMAPMessages and
// POP3Messages return when Dovecot refuses the user name and password.
var ErrLoginRefused = errors.New("testenv: dovecot refused the login")

// mailReadTimeout bounds one IMAPMessages or POP3Messages session.
const mailReadTimeout = 15 * time.Second

// IMAPMessages logs in to the instance's IMAP listener as username with
// password (LOGIN), selects INBOX and returns every message as IMAP serves
// it (UID FETCH 1:* BODY.PEEK[], byte for byte, CRLF line ends), in UID
// order, then logs out. A refused login is an error matching
// ErrLoginRefused. Selecting INBOX moves messages from new/ to cur/, as any
// IMAP client does; the messages stay unread.
func (d *DovecotServer) IMAPMessages(username, password string) ([][]byte, error) {
	c, err := net.DialTimeout("tcp", d.IMAPAddr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("imap: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(mailReadTimeout))
	r := bufio.NewReader(c)

	// response reads one response: its text (literals cut out, their {n}
	// markers kept) and its literals.
	response := func() (string, [][]byte, error) {
		var text strings.Builder
		var lits [][]byte
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return "", nil, fmt.Errorf("imap: read: %w", err)
			}
			line = strings.TrimRight(line, "\r\n")
			text.WriteString(line)
			n, ok := imapLiteralSize(line)
			if !ok {
				return text.String(), lits, nil
			}
			lit := make([]byte, n)
			if _, err := io.ReadFull(r, lit); err != nil {
				return "", nil, fmt.Errorf("imap: literal: %w", err)
			}
			lits = append(lits, lit)
		}
	}
	tag := 0
	// cmd sends a command and returns the untagged responses' literals
	// and the tagged status.
	cmd := func(format string, args ...any) ([][]byte, string, error) {
		tag++
		t := fmt.Sprintf("a%d", tag)
		if _, err := fmt.Fprintf(c, t+" "+format+"\r\n", args...); err != nil {
			return nil, "", fmt.Errorf("imap: write: %w", err)
		}
		var lits [][]byte
		for {
			text, l, err := response()
			if err != nil {
				return nil, "", err
			}
			if status, ok := strings.CutPrefix(text, t+" "); ok {
				return lits, status, nil
			}
			if strings.Contains(text, " FETCH ") {
				lits = append(lits, l...)
			}
		}
	}
	if greeting, _, err := response(); err != nil {
		return nil, err
	} else if !strings.HasPrefix(greeting, "* OK") {
		return nil, fmt.Errorf("imap: greeting %q", greeting)
	}
	quote := func(s string) string { return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"` }
	_, status, err := cmd("LOGIN %s %s", quote(username), quote(password))
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(status, "NO") {
		return nil, fmt.Errorf("%w: imap LOGIN %s: %s", ErrLoginRefused, username, status)
	}
	if !strings.HasPrefix(status, "OK") {
		return nil, fmt.Errorf("imap LOGIN %s: %s", username, status)
	}
	if _, status, err = cmd("SELECT INBOX"); err != nil {
		return nil, err
	} else if !strings.HasPrefix(status, "OK") {
		return nil, fmt.Errorf("imap SELECT INBOX: %s", status)
	}
	msgs, status, err := cmd("UID FETCH 1:* BODY.PEEK[]")
	if err != nil {
		return nil, err
	} else if !strings.HasPrefix(status, "OK") {
		return nil, fmt.Errorf("imap UID FETCH: %s", status)
	}
	if _, _, err := cmd("LOGOUT"); err != nil {
		return nil, err
	}
	return msgs, nil
}

// imapLiteralSize reports whether line ends with a literal's {n} and n.
func imapLiteralSize(line string) (int, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	open := strings.LastIndexByte(line, '{')
	if open < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSuffix(line[open+1:len(line)-1], "+"))
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// POP3Messages logs in to the instance's POP3 listener as username with
// password (USER/PASS) and returns every message as RETR serves it (dot
// stuffing removed, CRLF line ends kept), in order, then quits without
// deleting anything. A refused login is an error matching ErrLoginRefused.
func (d *DovecotServer) POP3Messages(username, password string) ([][]byte, error) {
	c, err := net.DialTimeout("tcp", d.POP3Addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("pop3: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(mailReadTimeout))
	r := bufio.NewReader(c)
	line := func() (string, error) {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("pop3: read: %w", err)
		}
		return strings.TrimRight(l, "\r\n"), nil
	}
	cmd := func(format string, args ...any) (string, error) {
		if _, err := fmt.Fprintf(c, format+"\r\n", args...); err != nil {
			return "", fmt.Errorf("pop3: write: %w", err)
		}
		return line()
	}
	if greeting, err := line(); err != nil {
		return nil, err
	} else if !strings.HasPrefix(greeting, "+OK") {
		return nil, fmt.Errorf("pop3: greeting %q", greeting)
	}
	for _, step := range []string{"USER " + username, "PASS " + password} {
		resp, err := cmd("%s", step)
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(resp, "+OK") {
			return nil, fmt.Errorf("%w: pop3 %s %s: %s", ErrLoginRefused, strings.Fields(step)[0], username, resp)
		}
	}
	stat, err := cmd("STAT")
	if err != nil {
		return nil, err
	}
	var n, size int
	if _, err := fmt.Sscanf(stat, "+OK %d %d", &n, &size); err != nil {
		return nil, fmt.Errorf("pop3 STAT: %q", stat)
	}
	msgs := make([][]byte, 0, n)
	for i := 1; i <= n; i++ {
		resp, err := cmd("RETR %d", i)
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(resp, "+OK") {
			return nil, fmt.Errorf("pop3 RETR %d: %s", i, resp)
		}
		var msg []byte
		for {
			l, err := r.ReadBytes('\n')
			if err != nil {
				return nil, fmt.Errorf("pop3 RETR %d: %w", i, err)
			}
			if string(l) == ".\r\n" {
				break
			}
			if l[0] == '.' {
				l = l[1:]
			}
			msg = append(msg, l...)
		}
		msgs = append(msgs, msg)
	}
	if _, err := cmd("QUIT"); err != nil {
		return nil, err
	}
	return msgs, nil
}
