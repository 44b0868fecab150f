package download

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/postern/postern/services/fetcher/internal/pop3"
)

// Kinds of failure, the "kind" label of postern_pop3_errors_total.
const (
	KindAccount    = "account"    // the account's settings cannot work (no target user, bad TLS mode, ...)
	KindConnect    = "connect"    // the server could not be reached
	KindTLS        = "tls"        // the TLS handshake failed (certificate, fingerprint pin)
	KindAuth       = "auth"       // the server refused the login
	KindUIDL       = "uidl"       // the server refused UIDL: nothing is downloaded from it
	KindConnection = "connection" // the connection was lost during the session
	KindTimeout    = "timeout"    // the server did not answer in time, or the session ran too long
	KindProtocol   = "protocol"   // the server sent a reply the client cannot understand
	KindServer     = "server"     // another -ERR reply (greeting, RETR, DELE, QUIT, ...)
	KindOversize   = "oversize"   // a message larger than the bus carries: left on the server
	KindRecipient  = "recipient"  // no recipient and no postmaster: the message is left on the server
	KindPublish    = "publish"    // mail.inbound did not acknowledge
	KindState      = "state"      // the site state (ledger, idempotency keys) failed
	KindSync       = "sync"       // the directory sync before the cycle refused to go on
)

// AccountError is the failure of one session with one account, or of one
// message in it.
type AccountError struct {
	Account string // the account's name
	UIDL    string // the message concerned, if any
	Kind    string // one of the Kind constants
	Err     error
}

func (e *AccountError) Error() string {
	if e.UIDL != "" {
		return fmt.Sprintf("pop3 account %s: message %s: %s: %v", e.Account, e.UIDL, e.Kind, e.Err)
	}
	return fmt.Sprintf("pop3 account %s: %s: %v", e.Account, e.Kind, e.Err)
}

func (e *AccountError) Unwrap() error { return e.Err }

// ErrorKind returns the kind of err: the Kind of an *AccountError in its
// chain, else a classification of the POP3 or network error.
func ErrorKind(err error) string {
	var ae *AccountError
	if errors.As(err, &ae) {
		return ae.Kind
	}
	return classify(err, "")
}

// classify names the kind of a POP3 session error; fallback is used for a
// -ERR reply to anything but a login.
func classify(err error, fallback string) string {
	var (
		pe   *pop3.Error
		ce   *pop3.ConnError
		prot *pop3.ProtocolError
		ne   net.Error
		oe   *net.OpError
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return KindTimeout
	case errors.Is(err, pop3.ErrFingerprint):
		return KindTLS
	case errors.Is(err, pop3.ErrAuthUnsupported):
		return KindAuth
	case errors.As(err, &pe):
		if pe.Command == "PASS" || pe.Command == "AUTH PLAIN" || len(pe.Command) > 5 && pe.Command[:5] == "APOP " || pe.Code == "AUTH" {
			return KindAuth
		}
		if fallback != "" {
			return fallback
		}
		return KindServer
	case errors.As(err, &ce):
		if ce.Timeout() {
			return KindTimeout
		}
		if ce.Command == "TLS handshake" {
			return KindTLS
		}
		return KindConnection
	case errors.As(err, &prot):
		return KindProtocol
	case errors.As(err, &oe) && oe.Op == "dial":
		return KindConnect
	case errors.As(err, &ne) && ne.Timeout():
		return KindTimeout
	}
	if isTLSError(err) {
		return KindTLS
	}
	if fallback != "" {
		return fallback
	}
	return KindConnection
}

// isTLSError reports whether err comes from a failed TLS handshake.
func isTLSError(err error) bool {
	var (
		cv  *tls.CertificateVerificationError
		ua  x509.UnknownAuthorityError
		he  x509.HostnameError
		ci  x509.CertificateInvalidError
		rh  tls.RecordHeaderError
		ae  tls.AlertError
		ecf *tls.ECHRejectionError
	)
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) ||
		errors.As(err, &rh) || errors.As(err, &ae) || errors.As(err, &ecf)
}
