package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// listed is the shape of every list answer of the API: a page of items,
// the cursor of the next page and the total.
type listed[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor"`
	Total      int64  `json:"total"`
}

// pageFrom reads the answer of a list operation called through the raw
// client (c.ListSites and so on; rsp and err are what it returned): the
// page of a 200 with the API's JSON, else the error answer gives. It lets
// a list command or a resolver be the call of its operation and nothing
// else.
func pageFrom[T any](rsp *http.Response, err error) (page[T], error) {
	if err != nil {
		return page[T]{}, err
	}
	body, err := io.ReadAll(rsp.Body)
	_ = rsp.Body.Close()
	if err != nil {
		return page[T]{}, err
	}
	var l *listed[T]
	if rsp.StatusCode == http.StatusOK && strings.Contains(rsp.Header.Get("Content-Type"), "json") {
		l = new(listed[T])
		if err := json.Unmarshal(body, l); err != nil {
			return page[T]{}, err
		}
	}
	if _, err := answer(rsp, body, http.StatusOK, l); err != nil {
		return page[T]{}, err
	}
	return page[T]{items: l.Items, next: l.NextCursor, total: l.Total}, nil
}
