package trace

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/sitestate"
)

// Handler answers GET /v1/trace?message_id=<Message-ID> or
// ?inbound_id=<id> with the site's Document of that message:
//
//   - 200 and the Document (application/json);
//   - 401 when Token is set and the request does not carry it as
//     "Authorization: Bearer <token>" (the same answer for no token and a
//     wrong one, before anything else is looked at);
//   - 400 when neither or both parameters are given, or the value cannot
//     be an id;
//   - 404 when the site has no status record of it (unknown, not yet
//     delivered anywhere, older than the retention, or tracing is off);
//   - 503 when the site state does not answer.
//
// Errors are RFC 9457 problems (application/problem+json). The answer holds
// what mail.status records hold (addresses, POP3 account ids and UIDLs, SMTP
// peers, authenticated user ids, outcome reasons) and never a password,
// token or message content: so anyone who can reach a side server that
// listens beyond the loopback interface must not get it without Token.
type Handler struct {
	Site  string               // the site answering
	Index sitestate.TraceIndex // nil: tracing is off, every lookup is 404 saying so
	Token config.Secret        // set: every request must carry it (router.trace.token)
	Log   *slog.Logger         // nil: slog.Default()
}

// Problem is an RFC 9457 problem document, as the handler writes it and
// Fetch returns it.
type Problem struct {
	Type   string `json:"type,omitempty"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func (p *Problem) Error() string {
	if p.Detail != "" {
		return p.Detail
	}
	return fmt.Sprintf("%d %s", p.Status, p.Title)
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	if h.Token.IsSet() && !h.authorized(r) {
		log.WarnContext(r.Context(), "trace request refused: no or wrong bearer token", slog.String("remote", r.RemoteAddr))
		w.Header().Set("WWW-Authenticate", `Bearer realm="postern trace"`)
		writeProblem(w, http.StatusUnauthorized, "give the site's router.trace.token as Authorization: Bearer <token> (postern trace: $POSTERN_TRACE_TOKEN)")
		return
	}
	q := r.URL.Query()
	msgID, inbound := q.Get("message_id"), q.Get("inbound_id")
	switch {
	case len(q["message_id"]) > 1 || len(q["inbound_id"]) > 1:
		writeProblem(w, http.StatusBadRequest, "give message_id or inbound_id once")
		return
	case (msgID == "") == (inbound == ""):
		writeProblem(w, http.StatusBadRequest, "give exactly one of message_id (the Message-ID header, with or without angle brackets) or inbound_id")
		return
	}
	doc := Document{Site: h.Site, Messages: []Message{}}
	var key, what string
	if msgID != "" {
		k, id, err := MessageIDKey(msgID)
		if err != nil {
			writeProblem(w, http.StatusBadRequest, fmt.Sprintf("message_id %q is not a Message-ID: one id, without spaces or control characters, at most 998 bytes", clip(msgID, 200)))
			return
		}
		key, doc.MessageID, what = k, id, "Message-ID <"+id+">"
	} else {
		k, err := InboundKey(inbound)
		if err != nil {
			writeProblem(w, http.StatusBadRequest, fmt.Sprintf("inbound_id %q is not an inbound id: at most %d printable characters without spaces", clip(inbound, 200), maxInboundID))
			return
		}
		key, doc.InboundID, what = k, inbound, "inbound id "+inbound
	}
	if h.Index == nil {
		writeProblem(w, http.StatusNotFound, fmt.Sprintf("message tracing is off at site %s (router.trace.enabled)", h.Site))
		return
	}
	tr, err := h.Index.List(r.Context(), key)
	switch {
	case errors.Is(err, sitestate.ErrNotFound):
		writeProblem(w, http.StatusNotFound, fmt.Sprintf("site %s has no status record of %s: unknown here, not routed yet, or older than the trace retention", h.Site, what))
		return
	case err != nil:
		log.ErrorContext(r.Context(), "trace lookup failed", slog.String("key", key), slog.Any("error", err))
		writeProblem(w, http.StatusServiceUnavailable, "the site state did not answer; try again")
		return
	}
	msgs, skipped := build(tr.Entries)
	if skipped > 0 {
		log.WarnContext(r.Context(), "trace records that do not decode were left out", slog.String("key", key), slog.Int("skipped", skipped))
	}
	doc.Messages, doc.Dropped = msgs, tr.Dropped
	writeJSON(w, http.StatusOK, "application/json", doc)
}

// authorized reports whether r carries the handler's token as a bearer
// token. The comparison takes the same time whatever the token given, its
// length included (both sides are hashed first).
func (h *Handler) authorized(r *http.Request) bool {
	scheme, given, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		given = ""
	}
	got, want := sha256.Sum256([]byte(strings.TrimSpace(given))), sha256.Sum256([]byte(h.Token.Reveal()))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

func writeProblem(w http.ResponseWriter, status int, detail string) {
	writeJSON(w, status, "application/problem+json", Problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail})
}

// writeJSON writes v indented, with <, > and & as they are (Message-IDs
// are written in angle brackets).
func writeJSON(w http.ResponseWriter, status int, contentType string, v any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, "cannot encode the answer", http.StatusInternalServerError)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", contentType)
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}
