package admin

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/postern/postern/api/usersclient"
)

func response(status int, contentType, body string) *http.Response {
	return &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {contentType}}, Body: io.NopCloser(strings.NewReader(body))}
}

// pageFrom reads a list answer as the generated client's Parse and answer
// did: the page of a 200 with JSON, the problem of any other answer, and
// an error for a 200 that is not the API's JSON.
func TestPageFrom(t *testing.T) {
	p, err := pageFrom[usersclient.Site](response(200, "application/json",
		`{"items":[{"name":"hq","domains":["example.org"]}],"next_cursor":"c2","total":7}`), nil)
	if err != nil || len(p.items) != 1 || p.items[0].Name != "hq" || p.next != "c2" || p.total != 7 {
		t.Errorf("a page: %+v %v", p, err)
	}
	_, err = pageFrom[usersclient.Site](response(403, "application/problem+json",
		`{"type":"urn:postern:problem:forbidden","title":"Not allowed","status":403,"detail":"no"}`), nil)
	if pe, ok := errors.AsType[*problemError](err); !ok || pe.status != 403 || pe.problem.Detail != "no" {
		t.Errorf("a problem: %v", err)
	}
	if _, err := pageFrom[usersclient.Site](response(200, "text/html", "<html>"), nil); err == nil || !strings.Contains(err.Error(), "not the API's JSON") {
		t.Errorf("a 200 that is not JSON: %v", err)
	}
	if _, err := pageFrom[usersclient.Site](response(200, "application/json", "{"), nil); err == nil {
		t.Error("broken JSON accepted")
	}
	sent := errors.New("connection refused")
	if _, err := pageFrom[usersclient.Site](nil, sent); !errors.Is(err, sent) {
		t.Errorf("a transport error: %v", err)
	}
}
