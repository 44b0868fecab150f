// Package pop3 is a POP3 client (RFC 1939) with CAPA (RFC 2449), STLS
// (RFC 2595), implicit TLS, USER/PASS, APOP and SASL PLAIN (RFC 5034), and
// PIPELINING when the server announces it.
//
// A Client is one POP3 session. It is not safe for concurrent use: issue
// one command at a time. Messages are streamed: Retr and Top return a
// reader of the message that the caller must read to its end or Close
// before issuing the next command (ErrReaderOpen otherwise).
//
// Every wait for the server is bounded by Options.Timeout and by the
// command's context; when either runs out, or the context is cancelled, the
// command fails with a *ConnError and the connection is closed (the server
// then discards the session's deletions).
//
// Errors: a -ERR reply is a *Error (the connection stays usable); a lost,
// timed-out or aborted connection is a *ConnError; a reply the client cannot
// parse is a *ProtocolError (the connection is closed); RetrLimit reports
// ErrTooLarge.
package pop3

import (
	"bufio"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"
)

// TLSMode says how a connection is secured.
type TLSMode int

const (
	// None: plaintext POP3 (port 110).
	None TLSMode = iota
	// StartTLS: plaintext connection upgraded with STLS before
	// authentication (port 110). Dial fails if the upgrade fails; it never
	// falls back to plaintext.
	StartTLS
	// Implicit: TLS from the first byte (POP3S, port 995).
	Implicit
)

func (m TLSMode) String() string {
	switch m {
	case None:
		return "none"
	case StartTLS:
		return "starttls"
	case Implicit:
		return "implicit"
	}
	return fmt.Sprintf("TLSMode(%d)", int(m))
}

// DefaultTimeout is used when Options.Timeout is zero.
const DefaultTimeout = 60 * time.Second

// Options configure Dial. The zero value is a plaintext connection with
// DefaultTimeout.
type Options struct {
	TLS TLSMode

	// TLSConfig is the base TLS configuration (cloned, never modified).
	// nil means the system roots; ServerName defaults to the host of the
	// address, MinVersion to TLS 1.2.
	TLSConfig *tls.Config

	// SkipVerify accepts any server certificate (self-signed servers).
	// Prefer Fingerprint, which still authenticates the server.
	SkipVerify bool

	// Fingerprint pins the server certificate: the SHA-256 of the leaf
	// certificate's DER encoding in hex (upper or lower case; colons and
	// spaces are ignored). When set, the pin replaces chain and host name
	// verification (so a self-signed certificate is accepted if, and only
	// if, it matches); a mismatch fails the handshake with ErrFingerprint,
	// even with SkipVerify.
	Fingerprint string

	// Timeout bounds each wait for the server: connecting, the TLS
	// handshake, and every read or write of every command. A command fails
	// if the server sends nothing for this long; a RETR that keeps
	// receiving data is not cut off (bound its total time with the
	// context). Default DefaultTimeout.
	Timeout time.Duration

	// Logger receives debug records of commands (never passwords or SASL
	// responses). nil discards them.
	Logger *slog.Logger
}

// MessageInfo describes a message in the maildrop. UID is empty from List.
type MessageInfo struct {
	Num  int
	Size int64
	UID  string
}

// AuthMethod selects how Auth logs in.
type AuthMethod int

const (
	// Auto: SASL PLAIN if the server announces it, else APOP if the
	// connection is not encrypted and the greeting offers APOP, else
	// USER/PASS.
	Auto AuthMethod = iota
	// User: USER then PASS.
	User
	// APOP: APOP with the MD5 digest of the greeting's timestamp and the
	// password. The server must offer it (a timestamp in the greeting).
	APOP
	// Plain: AUTH PLAIN (RFC 5034), with an initial response.
	Plain
)

func (m AuthMethod) String() string {
	switch m {
	case Auto:
		return "auto"
	case User:
		return "user"
	case APOP:
		return "apop"
	case Plain:
		return "plain"
	}
	return fmt.Sprintf("AuthMethod(%d)", int(m))
}

// pipelineWindow is how many pipelined commands are sent before their
// replies are read, so that neither side blocks on a full socket buffer.
const pipelineWindow = 64

// Client is a POP3 session. See the package documentation.
type Client struct {
	dc        *deadlineConn
	conn      net.Conn // dc, or a *tls.Conn over it
	br        *bufio.Reader
	bw        *bufio.Writer
	log       *slog.Logger
	caps      Capabilities // nil: CAPA not supported
	timestamp string       // APOP timestamp from the greeting
	tls       bool
	err       error      // set once the connection is unusable; matches ErrClosed
	open      *msgReader // the unfinished RETR/TOP reader
}

// Dial connects to addr (host:port), secures the connection as
// opts.TLS says, reads the greeting and the capabilities. ctx bounds the
// whole of Dial.
func Dial(ctx context.Context, addr string, opts Options) (*Client, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var tlsConf *tls.Config
	if opts.TLS != None {
		var err error
		if tlsConf, err = opts.tlsConfig(addr); err != nil {
			return nil, err
		}
	}
	nd := net.Dialer{Timeout: opts.Timeout}
	raw, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pop3: dial %s: %w", addr, err)
	}
	dc := &deadlineConn{Conn: raw, timeout: opts.Timeout}
	c := &Client{dc: dc, conn: dc, log: log.With("server", addr)}
	c.br = bufio.NewReaderSize(c.conn, 64<<10)
	c.bw = bufio.NewWriterSize(c.conn, 4<<10)
	if err := c.setup(ctx, opts.TLS, tlsConf); err != nil {
		c.close(err)
		return nil, err
	}
	return c, nil
}

func (c *Client) setup(ctx context.Context, mode TLSMode, tlsConf *tls.Config) error {
	if mode == Implicit {
		if err := c.startTLS(ctx, tlsConf); err != nil {
			return err
		}
	}
	unbind, err := c.begin(ctx, "greeting")
	if err != nil {
		return err
	}
	r, err := c.readReply(ctx, "greeting", false)
	unbind()
	if err != nil {
		return err
	}
	if r.status != statusOK {
		return &Error{Command: "greeting", Code: r.code, Text: r.text}
	}
	c.timestamp = apopTimestamp(r.text)
	if err := c.capa(ctx); err != nil {
		return err
	}
	if mode == StartTLS {
		if _, err := c.single(ctx, "STLS", "STLS"); err != nil {
			return err
		}
		if err := c.startTLS(ctx, tlsConf); err != nil {
			return err
		}
		if err := c.capa(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (c *Client) startTLS(ctx context.Context, conf *tls.Config) error {
	tc := tls.Client(c.dc, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		if errors.Is(err, ErrFingerprint) {
			return fmt.Errorf("tls handshake: %w", ErrFingerprint)
		}
		var ne net.Error
		if errors.As(err, &ne) {
			return c.connErr(ctx, "TLS handshake", 0, err)
		}
		return fmt.Errorf("tls handshake: %w", err)
	}
	c.conn = tc
	c.br.Reset(tc)
	c.bw.Reset(tc)
	c.tls = true
	return nil
}

func (o *Options) tlsConfig(addr string) (*tls.Config, error) {
	var conf *tls.Config
	if o.TLSConfig != nil {
		conf = o.TLSConfig.Clone()
	} else {
		conf = &tls.Config{}
	}
	if conf.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("pop3: address %q: %w", addr, err)
		}
		conf.ServerName = host
	}
	if conf.MinVersion == 0 {
		conf.MinVersion = tls.VersionTLS12
	}
	if o.SkipVerify {
		conf.InsecureSkipVerify = true
	}
	if o.Fingerprint != "" {
		pin, err := parseFingerprint(o.Fingerprint)
		if err != nil {
			return nil, err
		}
		conf.InsecureSkipVerify = true
		next := conf.VerifyConnection
		conf.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return ErrFingerprint
			}
			sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare(sum[:], pin) != 1 {
				return fmt.Errorf("%w (server's is %x)", ErrFingerprint, sum)
			}
			if next != nil {
				return next(cs)
			}
			return nil
		}
	}
	return conf, nil
}

func parseFingerprint(s string) ([]byte, error) {
	clean := strings.NewReplacer(":", "", " ", "").Replace(s)
	pin, err := hex.DecodeString(clean)
	if err != nil || len(pin) != sha256.Size {
		return nil, fmt.Errorf("pop3: fingerprint %q is not a hex SHA-256", s)
	}
	return pin, nil
}

// Capabilities returns the server's CAPA reply (a copy), as of the last
// CAPA: after STLS and after authentication the client asks again. It is nil
// if the server does not support CAPA.
func (c *Client) Capabilities() Capabilities {
	if c.caps == nil {
		return nil
	}
	cp := make(Capabilities, len(c.caps))
	for k, v := range c.caps {
		cp[k] = append([]string(nil), v...)
	}
	return cp
}

// TLS reports whether the connection is encrypted.
func (c *Client) TLS() bool { return c.tls }

func (c *Client) pipelining() bool { return c.caps.Has("PIPELINING") }

func (c *Client) capa(ctx context.Context) error {
	caps := Capabilities{}
	errs, err := c.run(ctx, []pcmd{{label: "CAPA", line: "CAPA", multi: true, each: func(l []byte) error {
		caps.add(l)
		return nil
	}}})
	if err != nil {
		return err
	}
	if errs[0] != nil {
		c.caps = nil // CAPA unsupported
		return nil
	}
	c.caps = caps
	return nil
}

// Auth logs in as user with pass using method, then refreshes the
// capabilities. A refused login is a *Error (Command "PASS", "APOP user"
// or "AUTH PLAIN"); ErrAuthUnsupported if the method is not offered.
func (c *Client) Auth(ctx context.Context, user, pass string, method AuthMethod) error {
	if method == Auto {
		switch {
		case c.caps.HasParam("SASL", "PLAIN"):
			method = Plain
		case !c.tls && c.timestamp != "":
			method = APOP
		default:
			method = User
		}
	}
	if strings.ContainsAny(user, "\r\n") || strings.ContainsAny(pass, "\r\n") {
		return errors.New("pop3: auth: user name or password contains CR or LF")
	}
	var err error
	switch method {
	case User:
		if _, err = c.single(ctx, "USER "+user, "USER "+user); err == nil {
			_, err = c.single(ctx, "PASS", "PASS "+pass)
		}
	case APOP:
		if c.timestamp == "" {
			return fmt.Errorf("apop: %w (no timestamp in the greeting)", ErrAuthUnsupported)
		}
		sum := md5.Sum([]byte(c.timestamp + pass))
		label := "APOP " + user
		_, err = c.single(ctx, label, label+" "+hex.EncodeToString(sum[:]))
	case Plain:
		if c.caps != nil && !c.caps.HasParam("SASL", "PLAIN") {
			return fmt.Errorf("auth plain: %w", ErrAuthUnsupported)
		}
		err = c.authPlain(ctx, user, pass)
	default:
		return fmt.Errorf("pop3: auth: unknown method %v", method)
	}
	if err != nil {
		return err
	}
	c.log.Debug("pop3 logged in", "user", user, "method", method.String())
	if c.caps != nil {
		return c.capa(ctx)
	}
	return nil
}

func (c *Client) authPlain(ctx context.Context, user, pass string) error {
	const label = "AUTH PLAIN"
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	unbind, err := c.begin(ctx, label)
	if err != nil {
		return err
	}
	defer unbind()
	// RFC 5034: the initial response only if the command fits in 255 octets.
	line := label + " " + resp
	if len(line) > 253 {
		line = label
	}
	if err := c.send(ctx, label, line); err != nil {
		return err
	}
	r, err := c.readReply(ctx, label, true)
	if err != nil {
		return err
	}
	if r.status == statusCont {
		if line != label {
			// The server asked again although it got the initial
			// response: cancel the exchange.
			resp = "*"
		}
		if err := c.send(ctx, label, resp); err != nil {
			return err
		}
		if r, err = c.readReply(ctx, label, false); err != nil {
			return err
		}
	}
	if r.status != statusOK {
		return &Error{Command: label, Code: r.code, Text: r.text}
	}
	return nil
}

// Stat returns the number of messages and their total size (STAT).
func (c *Client) Stat(ctx context.Context) (count int, size int64, err error) {
	text, err := c.single(ctx, "STAT", "STAT")
	if err != nil {
		return 0, 0, err
	}
	count, size, perr := parseStat(text)
	if perr != nil {
		return 0, 0, c.protocolErr("STAT", text, perr.Error())
	}
	return count, size, nil
}

// List returns the number and size of every message not marked deleted
// (LIST).
func (c *Client) List(ctx context.Context) ([]MessageInfo, error) {
	var msgs []MessageInfo
	errs, err := c.run(ctx, []pcmd{c.listCmd(&msgs)})
	if err != nil {
		return nil, err
	}
	return msgs, errs[0]
}

func (c *Client) listCmd(msgs *[]MessageInfo) pcmd {
	return pcmd{label: "LIST", line: "LIST", multi: true, each: func(l []byte) error {
		num, size, _, err := parseListLine(l, false)
		if err != nil {
			return c.protocolErr("LIST", string(l), err.Error())
		}
		*msgs = append(*msgs, MessageInfo{Num: num, Size: size})
		return nil
	}}
}

// UIDL returns the number, size and unique id of every message not marked
// deleted: it sends LIST and UIDL (pipelined if the server supports it).
func (c *Client) UIDL(ctx context.Context) ([]MessageInfo, error) {
	var msgs []MessageInfo
	uids := map[int]string{}
	errs, err := c.run(ctx, []pcmd{c.listCmd(&msgs), {label: "UIDL", line: "UIDL", multi: true, each: func(l []byte) error {
		num, _, uid, err := parseListLine(l, true)
		if err != nil {
			return c.protocolErr("UIDL", string(l), err.Error())
		}
		uids[num] = uid
		return nil
	}}})
	if err != nil {
		return nil, err
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i := range msgs {
		uid, ok := uids[msgs[i].Num]
		if !ok {
			return nil, c.protocolErr("UIDL", fmt.Sprint(msgs[i].Num), "message in LIST missing from UIDL")
		}
		msgs[i].UID = uid
	}
	return msgs, nil
}

// Dele marks messages deleted (one DELE each, pipelined if the server
// supports it). They are removed by Quit; Close or a lost connection
// discards the marks. A message the server refuses yields a *Error for it
// (joined with errors.Join); the others are still marked.
func (c *Client) Dele(ctx context.Context, nums ...int) error {
	if len(nums) == 0 {
		return nil
	}
	cmds := make([]pcmd, len(nums))
	for i, n := range nums {
		cmds[i] = pcmd{label: fmt.Sprintf("DELE %d", n), line: fmt.Sprintf("DELE %d", n)}
	}
	errs, err := c.run(ctx, cmds)
	if err != nil {
		return err
	}
	return errors.Join(errs...)
}

// Rset unmarks all messages marked deleted (RSET).
func (c *Client) Rset(ctx context.Context) error {
	_, err := c.single(ctx, "RSET", "RSET")
	return err
}

// Noop does nothing but check the connection (NOOP).
func (c *Client) Noop(ctx context.Context) error {
	_, err := c.single(ctx, "NOOP", "NOOP")
	return err
}

// Quit ends the session with QUIT, which makes the server remove the
// messages marked deleted, and closes the connection. A *Error means the
// server could not remove them all.
func (c *Client) Quit(ctx context.Context) error {
	_, err := c.single(ctx, "QUIT", "QUIT")
	c.close(ErrClosed)
	return err
}

// Close closes the connection without QUIT: the server discards the
// deletion marks. It is safe to call more than once and after Quit.
func (c *Client) Close() error {
	if c.err != nil {
		return nil
	}
	return c.close(ErrClosed)
}

// close makes the client unusable because of cause and closes the connection.
func (c *Client) close(cause error) error {
	if c.err != nil {
		return nil
	}
	if errors.Is(cause, ErrClosed) {
		c.err = cause
	} else {
		c.err = fmt.Errorf("%w after an error: %w", ErrClosed, cause)
	}
	return c.conn.Close()
}

// Retr returns a reader of message n (RETR), with the byte-stuffing
// undone: the message as the server stores it, lines ending in CRLF.
//
// The caller must read it to io.EOF or Close it before the next command.
// Close reads and discards the rest so that the connection stays usable;
// to abandon a large message quickly, Close the Client instead. ctx bounds
// the reading of the whole message, not just the start. An error while
// reading is a *ConnError naming the command and the bytes delivered.
func (c *Client) Retr(ctx context.Context, n int) (io.ReadCloser, error) {
	return c.stream(ctx, fmt.Sprintf("RETR %d", n), -1)
}

// RetrLimit is Retr for a message of at most max bytes. It first asks
// for the message's size (LIST n): if larger, it returns an error matching
// ErrTooLarge without retrieving it, and the connection stays usable. If
// the server then sends more than max bytes anyway (its LIST size was
// wrong), the reader fails with ErrTooLarge and the connection is closed.
func (c *Client) RetrLimit(ctx context.Context, n int, max int64) (io.ReadCloser, error) {
	label := fmt.Sprintf("LIST %d", n)
	text, err := c.single(ctx, label, label)
	if err != nil {
		return nil, err
	}
	_, size, _, perr := parseListLine([]byte(text), false)
	if perr != nil {
		return nil, c.protocolErr(label, text, perr.Error())
	}
	if size > max {
		return nil, fmt.Errorf("retr %d: message of %d bytes exceeds the limit of %d: %w", n, size, max, ErrTooLarge)
	}
	return c.stream(ctx, fmt.Sprintf("RETR %d", n), max)
}

// Top returns a reader of the header and the first lines lines of the
// body of message n (TOP), with the same obligations as Retr.
func (c *Client) Top(ctx context.Context, n, lines int) (io.ReadCloser, error) {
	return c.stream(ctx, fmt.Sprintf("TOP %d %d", n, lines), -1)
}

func (c *Client) stream(ctx context.Context, label string, max int64) (io.ReadCloser, error) {
	unbind, err := c.begin(ctx, label)
	if err != nil {
		return nil, err
	}
	if err := c.send(ctx, label, label); err != nil {
		unbind()
		return nil, err
	}
	r, err := c.readReply(ctx, label, false)
	if err != nil {
		unbind()
		return nil, err
	}
	if r.status != statusOK {
		unbind()
		return nil, &Error{Command: label, Code: r.code, Text: r.text}
	}
	m := &msgReader{c: c, ctx: ctx, label: label, dr: newDotReader(c.br), max: max, unbind: unbind}
	c.open = m
	return m, nil
}

// msgReader is the reader Retr and Top return.
type msgReader struct {
	c      *Client
	ctx    context.Context
	label  string
	dr     *dotReader
	n      int64
	max    int64 // -1: no limit
	unbind func()
	done   bool
	err    error
}

func (m *msgReader) Read(p []byte) (int, error) {
	if m.done {
		if m.err != nil {
			return 0, m.err
		}
		return 0, io.EOF
	}
	if m.c.open != m {
		m.done, m.err = true, fmt.Errorf("%s: %w", strings.ToLower(m.label), ErrClosed)
		return 0, m.err
	}
	k, err := m.dr.Read(p)
	m.n += int64(k)
	switch {
	case m.max >= 0 && m.n > m.max:
		m.err = fmt.Errorf("%s: more than %d bytes: %w", strings.ToLower(m.label), m.max, ErrTooLarge)
		m.finish()
		m.c.close(m.err)
		return k, m.err
	case err == io.EOF:
		m.finish()
		m.c.log.Debug("pop3 message read", "command", m.label, "bytes", m.n)
		return k, io.EOF
	case err != nil:
		m.err = m.c.connErr(m.ctx, m.label, m.n, err)
		m.finish()
		return k, m.err
	}
	return k, nil
}

func (m *msgReader) finish() {
	m.done = true
	m.unbind()
	if m.c.open == m {
		m.c.open = nil
	}
}

// Close discards the rest of the message (see Client.Retr).
func (m *msgReader) Close() error {
	if m.done {
		return nil
	}
	_, err := io.Copy(io.Discard, m)
	return err
}

// pcmd is a command for run: a single-line reply, or a multi-line one
// whose lines go to each.
type pcmd struct {
	label string // for errors and logs: never a password
	line  string // sent to the server
	multi bool
	each  func(line []byte) error
	text  *string // receives the +OK text
}

// run sends cmds and reads their replies, pipelined (in windows of
// pipelineWindow) if the server supports it. A -ERR reply yields a *Error
// in errs at the command's index; a failure of the connection or of the
// protocol ends the run and is returned as err (the connection is closed).
func (c *Client) run(ctx context.Context, cmds []pcmd) (errs []error, err error) {
	unbind, err := c.begin(ctx, cmds[0].label)
	if err != nil {
		return nil, err
	}
	defer unbind()
	errs = make([]error, len(cmds))
	window := 1
	if c.pipelining() {
		window = pipelineWindow
	}
	for start := 0; start < len(cmds); start += window {
		batch := cmds[start:min(start+window, len(cmds))]
		for _, pc := range batch {
			if _, err := c.bw.WriteString(pc.line + "\r\n"); err != nil {
				return nil, c.connErr(ctx, pc.label, 0, err)
			}
			c.log.Debug("pop3 command", "command", pc.label)
		}
		if err := c.bw.Flush(); err != nil {
			return nil, c.connErr(ctx, batch[0].label, 0, err)
		}
		for i, pc := range batch {
			r, err := c.readReply(ctx, pc.label, false)
			if err != nil {
				return nil, err
			}
			if r.status != statusOK {
				errs[start+i] = &Error{Command: pc.label, Code: r.code, Text: r.text}
				continue
			}
			if pc.text != nil {
				*pc.text = r.text
			}
			if pc.multi {
				if err := c.readLines(ctx, pc.label, pc.each); err != nil {
					return nil, err
				}
			}
		}
	}
	return errs, nil
}

// single runs one command with a single-line reply and returns its text.
func (c *Client) single(ctx context.Context, label, line string) (string, error) {
	var text string
	errs, err := c.run(ctx, []pcmd{{label: label, line: line, text: &text}})
	if err != nil {
		return "", err
	}
	return text, errs[0]
}

// begin checks that a command may be issued and binds ctx to the connection.
func (c *Client) begin(ctx context.Context, label string) (unbind func(), err error) {
	if c.open != nil {
		return nil, fmt.Errorf("%s: %w", strings.ToLower(label), ErrReaderOpen)
	}
	if c.err != nil {
		return nil, fmt.Errorf("%s: %w", strings.ToLower(label), c.err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", strings.ToLower(label), err)
	}
	return c.dc.bind(ctx), nil
}

func (c *Client) send(ctx context.Context, label, line string) error {
	c.log.Debug("pop3 command", "command", label)
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	if err := c.bw.Flush(); err != nil {
		return c.connErr(ctx, label, 0, err)
	}
	return nil
}

// readReply reads and parses a status line.
func (c *Client) readReply(ctx context.Context, label string, cont bool) (reply, error) {
	line, err := c.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return reply{}, c.protocolErr(label, string(line[:80]), "status line too long")
	}
	if err != nil {
		return reply{}, c.connErr(ctx, label, 0, err)
	}
	line = trimEOL(line)
	r, perr := parseReply(line, cont)
	if perr != nil {
		return reply{}, c.protocolErr(label, string(line[:min(len(line), 200)]), perr.Error())
	}
	if r.status == statusErr {
		c.log.Debug("pop3 -ERR", "command", label, "text", r.text)
	}
	return r, nil
}

// readLines reads the body of a multi-line reply line by line.
func (c *Client) readLines(ctx context.Context, label string, each func([]byte) error) error {
	sc := bufio.NewScanner(newDotReader(c.br))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		if err := each(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return c.protocolErr(label, "", "line too long in multi-line reply")
		}
		return c.connErr(ctx, label, 0, err)
	}
	return nil
}

func trimEOL(line []byte) []byte {
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line
}

// protocolErr closes the connection and returns a *ProtocolError.
func (c *Client) protocolErr(label, line, reason string) error {
	err := &ProtocolError{Command: label, Line: line, Reason: reason}
	c.close(err)
	return err
}

// connErr turns an I/O error into a *ConnError and closes the connection.
func (c *Client) connErr(ctx context.Context, label string, n int64, err error) error {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return err
	}
	if c.err != nil && errors.Is(err, net.ErrClosed) {
		// Closed by us (Close, or an earlier failure).
		return fmt.Errorf("%s: %w", strings.ToLower(label), c.err)
	}
	ce := &ConnError{Command: label, Bytes: n, Err: err}
	dl, hasDL := ctx.Deadline()
	switch {
	case ctx.Err() != nil:
		ce.ctxErr, ce.Err = true, ctx.Err()
	case hasDL && !time.Now().Before(dl):
		ce.ctxErr, ce.Err = true, context.DeadlineExceeded
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			ce.timeout = true
		}
	}
	c.close(ce)
	return ce
}
