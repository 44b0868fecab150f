package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/cmd/postern/internal/admin"
	"github.com/postern/postern/services/router/trace"
)

// defaultTraceSite is the router's side server in single-box mode
// (router.http.listen).
const defaultTraceSite = "http://127.0.0.1:9182"

const traceHelp = `Follow one message through a site: where it came from, how each recipient
was routed and every outcome (delivered, deferred with the next attempt,
bounced, rejected), from the site's mail.status records. It asks the trace
endpoint (GET /v1/trace) of the router's side server of the site at --site
(router.http.listen); each site answers for its own part of the way, so
mail that crossed to another site is followed there with that site's URL.
The Message-ID may be given with or without its angle brackets. With
--inbound-id the argument is an inbound id (as in the logs and in the
trace) instead. A site whose router.trace.token is set answers only with
it: set $POSTERN_TRACE_TOKEN (or give --token, which other users of the
machine can read in the process list).

Exit status: 0 found, 1 unknown at the site or the site unreachable, 2 the
command line is wrong.`

// traceCommand is `postern trace`.
func traceCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("postern trace", flag.ContinueOnError)
	fs.SetOutput(stderr)
	site := getenv("POSTERN_SITE_URL")
	if site == "" {
		site = defaultTraceSite
	}
	fs.StringVar(&site, "site", site, "`URL` of the site's router side server ($POSTERN_SITE_URL)")
	// The default is not shown, so that -h never prints the token.
	token := getenv("POSTERN_TRACE_TOKEN")
	fs.Func("token", "the site's router.trace.token ($POSTERN_TRACE_TOKEN; the variable keeps it out of the process list)", func(v string) error {
		token = v
		return nil
	})
	byInbound := fs.Bool("inbound-id", false, "the argument is an inbound id, not a Message-ID")
	asJSON := fs.Bool("json", false, "print the endpoint's JSON document instead of the timeline")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this `duration`")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: postern trace [flags] <Message-ID>\n\n%s\n\nflags:\n", traceHelp)
		fs.PrintDefaults()
	}
	// Flags and the argument in any order, as in every command.
	pos, err := admin.ParseArgs(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // the flag package printed the error and the usage
	}
	if len(pos) != 1 {
		fs.Usage()
		fmt.Fprintf(stderr, "postern: trace wants one Message-ID, got %d arguments\n", len(pos))
		return 2
	}
	base, err := siteURL(site)
	if err != nil {
		fmt.Fprintf(stderr, "postern: --site: %v\n", err)
		return 2
	}
	token = strings.TrimSpace(token)
	if strings.IndexFunc(token, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		fmt.Fprintln(stderr, "postern: the trace token holds spaces or control characters")
		return 2
	}
	q := trace.Query{Token: token}
	if *byInbound {
		if _, err := trace.InboundKey(pos[0]); err != nil {
			fmt.Fprintf(stderr, "postern: %q is not an inbound id\n", clean(pos[0]))
			return 2
		}
		q.InboundID = pos[0]
	} else {
		if _, _, err := trace.MessageIDKey(pos[0]); err != nil {
			fmt.Fprintf(stderr, "postern: %q is not a Message-ID: give one id, such as <abc.123@example.com>\n", clean(pos[0]))
			return 2
		}
		q.MessageID = pos[0]
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "postern: --timeout must be positive")
		return 2
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	doc, err := trace.Fetch(ctx, &http.Client{}, base, q)
	if err != nil {
		var p *trace.Problem
		switch {
		case errors.As(err, &p):
			fmt.Fprintf(stderr, "postern: %s\n", clean(p.Error()))
			switch p.Status {
			case http.StatusBadRequest:
				return 2
			case http.StatusUnauthorized:
				fmt.Fprintln(stderr, "  (set $POSTERN_TRACE_TOKEN, or give --token, to the site's router.trace.token)")
			}
		case errors.Is(err, trace.ErrUnreachable):
			fmt.Fprintf(stderr, "postern: %v\n  (is the site's router running? --site names its side server, router.http.listen; now %s)\n", err, base)
		case errors.Is(err, context.DeadlineExceeded):
			fmt.Fprintf(stderr, "postern: the site at %s did not answer within %s\n", base, *timeout)
		default:
			fmt.Fprintf(stderr, "postern: %s\n", clean(err.Error()))
		}
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(doc); err != nil {
			fmt.Fprintf(stderr, "postern: %v\n", err)
			return 1
		}
		return 0
	}
	writeTimeline(stdout, doc)
	return 0
}

// siteURL accepts a URL or a bare host:port (taken as http://).
func siteURL(s string) (string, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		return "", fmt.Errorf("%q is not an http:// or https:// URL of a side server (such as %s)", s, defaultTraceSite)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// writeTimeline prints a trace for people: each inbound record with where
// it came from, then each recipient with its routing and its outcomes.
func writeTimeline(w io.Writer, doc *trace.Document) {
	switch {
	case doc.MessageID != "":
		fmt.Fprintf(w, "Message-ID <%s> at site %s\n", clean(doc.MessageID), clean(doc.Site))
	default:
		fmt.Fprintf(w, "Inbound record %s at site %s\n", clean(doc.InboundID), clean(doc.Site))
	}
	if doc.Dropped > 0 {
		fmt.Fprintf(w, "(%d older status records are no longer kept: router.trace.max_records)\n", doc.Dropped)
	}
	for _, m := range doc.Messages {
		fmt.Fprintf(w, "\ninbound %s", clean(m.InboundID))
		if doc.MessageID == "" && m.MessageID != "" {
			fmt.Fprintf(w, "  <%s>", clean(m.MessageID))
		}
		fmt.Fprintln(w)
		if !m.ReceivedAt.IsZero() {
			fmt.Fprintf(w, "  received  %s\n", when(m.ReceivedAt))
		}
		fmt.Fprintf(w, "  from      %s\n", clean(describeSource(m.Source)))
		for _, r := range m.Recipients {
			fmt.Fprintf(w, "  %s\n", clean(describeRouting(r)))
			var b bytes.Buffer
			tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
			for _, e := range r.Events {
				fmt.Fprintf(tw, "      %s\t%s\t%s\t%s\n", when(e.At), clean(stageAttempt(e)), clean(e.Outcome), clean(eventDetail(e)))
			}
			tw.Flush()
			for line := range strings.Lines(b.String()) {
				fmt.Fprintln(w, strings.TrimRight(line, " \n"))
			}
		}
	}
}

func when(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") }

func describeSource(s trace.Source) string {
	switch s.Kind {
	case events.SourcePOP3:
		return fmt.Sprintf("POP3 account %s, UIDL %s", s.POP3Account, s.POP3UIDL)
	case events.SourceSMTP:
		parts := []string{"SMTP"}
		if s.SMTPRemote != "" {
			parts = append(parts, "from "+s.SMTPRemote)
		}
		if s.SMTPHelo != "" {
			parts = append(parts, "(HELO "+s.SMTPHelo+")")
		}
		if s.AuthUser != "" {
			parts = append(parts, "authenticated as user "+s.AuthUser)
		}
		if s.SMTPSession != "" {
			parts = append(parts, "session "+s.SMTPSession)
		}
		return strings.Join(parts, " ")
	case "":
		return "unknown"
	default:
		return s.Kind
	}
}

func describeRouting(r trace.Recipient) string {
	var b strings.Builder
	if r.OriginalRecipient != "" {
		b.WriteString(r.OriginalRecipient + " → ")
	}
	b.WriteString(r.Recipient)
	switch r.Destination {
	case events.DestLocal:
		b.WriteString(" (local mailbox)")
	case events.DestSite:
		b.WriteString(" (to another site)")
	case events.DestOutbound:
		b.WriteString(" (outbound, through the smarthost)")
	case "":
	default:
		b.WriteString(" (" + r.Destination + ")")
	}
	b.WriteString(": " + r.State)
	return b.String()
}

func stageAttempt(e trace.Event) string {
	if e.Attempt > 0 {
		return fmt.Sprintf("%s, attempt %d", e.Stage, e.Attempt)
	}
	return e.Stage
}

func eventDetail(e trace.Event) string {
	var parts []string
	if e.SMTPCode != 0 && !strings.HasPrefix(e.Reason, fmt.Sprint(e.SMTPCode)) {
		parts = append(parts, fmt.Sprint(e.SMTPCode))
	}
	if e.Reason != "" {
		parts = append(parts, e.Reason)
	}
	if !e.NextAttempt.IsZero() {
		parts = append(parts, "next attempt "+when(e.NextAttempt))
	}
	return strings.Join(parts, "; ")
}

// clean replaces control characters (admin.Sanitize): a reason comes from
// a remote server and an address from a message, and neither may move the
// cursor or forge lines on the operator's terminal.
func clean(s string) string { return admin.Sanitize(s, false) }
