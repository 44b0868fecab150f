// Package e2e holds Postern's end-to-end tests: the real binary (`postern
// serve`) as child processes, a real Dovecot reading the mailboxes, an SMTP
// sink as the ISP's smarthost, and mail sent and read the way users do
// (SMTP submission with STARTTLS and AUTH, IMAP, POP3). The harness is in
// internal/harness.
//
// Run with: CI=true go test -count=1 ./e2e/ (Dovecot must be installed;
// without CI=true the tests that need it are skipped when it is missing).
package e2e
