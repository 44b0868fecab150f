package trace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// Query names the message to trace (a Message-ID or an inbound id) and
// carries the site's trace token, if it has one.
type Query struct {
	MessageID string
	InboundID string
	// Token is sent as "Authorization: Bearer <Token>" (the site's
	// router.trace.token); empty: no Authorization header.
	Token string
}

// maxDocument bounds the answer Fetch reads: 100,000 records of a few
// hundred bytes.
const maxDocument = 256 << 20

// ErrUnreachable is matched by the error Fetch returns when the site's side
// server cannot be reached at all (refused, timed out, no such host): an
// *UnreachableError.
var ErrUnreachable = errors.New("site unreachable")

// UnreachableError says which side server could not be reached, and why.
type UnreachableError struct {
	Host string // host:port of the side server
	Err  error  // the network's reason
}

func (e *UnreachableError) Error() string        { return "cannot reach " + e.Host + ": " + e.Err.Error() }
func (e *UnreachableError) Unwrap() error        { return e.Err }
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

// Fetch asks the trace endpoint of the router whose side server is at base
// ("http://127.0.0.1:9182"). An answer other than 200 is returned as a
// *Problem (with the server's detail when it sent one); a network failure
// matches ErrUnreachable.
func Fetch(ctx context.Context, c *http.Client, base string, q Query) (*Document, error) {
	u, err := url.Parse(strings.TrimRight(base, "/") + Path)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an http:// or https:// URL", base)
	}
	v := url.Values{}
	if q.MessageID != "" {
		v.Set("message_id", q.MessageID)
	}
	if q.InboundID != "" {
		v.Set("inbound_id", q.InboundID)
	}
	u.RawQuery = v.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	if q.Token != "" {
		req.Header.Set("Authorization", "Bearer "+q.Token)
	}
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &UnreachableError{Host: u.Host, Err: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument+1))
	if err != nil {
		return nil, fmt.Errorf("reading the answer of %s: %w", u.Host, err)
	}
	if len(body) > maxDocument {
		return nil, fmt.Errorf("the answer of %s is larger than %d bytes", u.Host, maxDocument)
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusOK {
		p := &Problem{Status: resp.StatusCode, Title: http.StatusText(resp.StatusCode)}
		if mt == "application/problem+json" || mt == "application/json" {
			var got Problem
			if json.Unmarshal(body, &got) == nil && got.Title != "" {
				p = &got
				p.Status = resp.StatusCode
			}
		}
		if p.Detail == "" && resp.StatusCode == http.StatusNotFound {
			p.Detail = fmt.Sprintf("%s has no %s: is it a router's side server (router.http.listen)?", u.Host, Path)
		}
		return nil, p
	}
	if mt != "application/json" {
		return nil, fmt.Errorf("%s answered %q, not the trace JSON: is it a router's side server (router.http.listen)?", u.Host, resp.Header.Get("Content-Type"))
	}
	var doc Document
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("the answer of %s is not a trace: %w", u.Host, err)
	}
	return &doc, nil
}

// unwrapURLError drops the *url.Error wrapping, which repeats the URL.
func unwrapURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}
