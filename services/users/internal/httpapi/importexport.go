package httpapi

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/csvio"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// ---------------------------------------------------------------------------
// Export.

// jsonExport is the JSON export, written by csvio.WriteJSON.
type jsonExport struct{ body []byte }

func (r jsonExport) VisitExportUsersResponse(w http.ResponseWriter) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(r.body)
	return err
}

func (h *Handlers) ExportUsers(ctx context.Context, req usersapi.ExportUsersRequestObject) (usersapi.ExportUsersResponseObject, error) {
	p, err := canUseUsers(ctx, false)
	if err != nil {
		return nil, err
	}
	site, err := scopeSite(p, req.Params.Site)
	if err != nil {
		return nil, err
	}
	// Hashes only for those who may set passwords: admins, and a
	// site_admin, whose export is always of its own site.
	withHash := p.Role == directory.RoleAdmin || p.Role == directory.RoleSiteAdmin
	var users []csvio.ExportUser
	for cursor := ""; ; {
		page, next, _, err := h.store.ListUsers(ctx, store.UserFilter{Site: lowerTrim(site), Page: store.Page{Limit: store.MaxLimit, Cursor: cursor}})
		if err != nil {
			return nil, problemFor(err, nil)
		}
		for i := range page {
			eu := csvio.FromUser(&page[i])
			if !withHash {
				eu.PasswordHash = ""
			}
			users = append(users, eu)
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	var buf bytes.Buffer
	if deref(req.Params.Format) == usersapi.ExportFormatJSON {
		if err := csvio.WriteJSON(&buf, users); err != nil {
			return nil, err
		}
		return jsonExport{body: buf.Bytes()}, nil
	}
	if err := csvio.Write(&buf, users); err != nil {
		return nil, err
	}
	return usersapi.ExportUsers200TextCsvResponse{Body: &buf, ContentLength: int64(buf.Len())}, nil
}

// ---------------------------------------------------------------------------
// Import.

// errRollback ends the transaction of a dry run, or of an import with bad
// lines, writing nothing.
var errRollback = errors.New("roll back")

// importLine is one problem of an import file.
type importLine struct {
	line   int
	column string // the column's name, lower-case; "" for the whole line
	reason string
}

func (h *Handlers) ImportUsers(ctx context.Context, req usersapi.ImportUsersRequestObject) (usersapi.ImportUsersResponseObject, error) {
	p, err := canUseUsers(ctx, true)
	if err != nil {
		return nil, err
	}
	if p.Role != directory.RoleAdmin && p.Role != directory.RoleSiteAdmin {
		return nil, forbidden(fmt.Sprintf("Importing users needs an admin or site_admin token; %s.", roleNote(p)))
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, tooLarge(h.maxBody)
		}
		return nil, fmt.Errorf("read the CSV file: %w", err)
	}
	defaults := defaultTemplate()
	if t := req.Params.Template; t != nil {
		if defaults, err = h.templateNamed(ctx, *t, "template"); err != nil {
			return nil, err
		}
	}
	if p.Role == directory.RoleSiteAdmin {
		defaults.Site = p.Site // a site_admin imports into its own site
	}
	if defaults.Site == "" {
		// A directory with one site (a single office): the seed's
		// three-column file imports into it without naming it.
		if defaults.Site, err = h.onlySite(ctx); err != nil {
			return nil, err
		}
	}
	dryRun := deref(req.Params.DryRun)

	rows, parseErrs := csvio.Parse(bytes.NewReader(body))
	var lines []importLine
	for _, e := range parseErrs {
		lines = append(lines, importLine{line: e.Line, column: strings.ToLower(strings.TrimSpace(e.Column)), reason: e.Reason})
	}
	commit := !dryRun && len(parseErrs) == 0
	var hashes []string
	if commit {
		if hashes, err = h.hashPasswords(ctx, rows); err != nil {
			return nil, err
		}
	}
	im := importer{p: p, rows: rows, hashes: hashes, defaults: defaults, template: deref(req.Params.Template)}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		if err := im.run(ctx, tx); err != nil {
			return err
		}
		if !commit || len(im.lines) > 0 || len(im.created)+len(im.updated) == 0 {
			return errRollback
		}
		return im.audit(ctx, tx)
	})
	if err != nil && err != errRollback {
		return nil, problemFor(err, nil)
	}
	lines = append(lines, im.lines...)

	fields := lineFields(body, lines)
	if !dryRun && len(fields) > 0 {
		bad := map[int]bool{}
		for _, l := range lines {
			bad[l.line] = true
		}
		return nil, &problemError{Status: http.StatusUnprocessableEntity, Type: typeValidation, Title: "Invalid CSV file",
			Detail: countDetail(len(bad), "line is", "lines are", "invalid") + " Nothing was imported.", Errors: fields}
	}
	unchangedNames := strs(im.unchanged)
	return usersapi.ImportUsers200JSONResponse{
		DryRun: dryRun, Created: strs(im.created), Updated: strs(im.updated), Unchanged: &unchangedNames, Errors: fields,
	}, nil
}

// hashPasswords hashes the plain passwords of rows on h.workers
// goroutines; hashes[i] is row i's hash ("" when it gave a hash).
func (h *Handlers) hashPasswords(ctx context.Context, rows []csvio.Row) ([]string, error) {
	hashes := make([]string, len(rows))
	idx := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	for range min(h.workers, max(1, len(rows))) {
		wg.Go(func() {
			defer func() {
				if r := recover(); r != nil {
					fail(fmt.Errorf("hash passwords: panic: %v", r))
					for range idx { // let the feeder finish
					}
				}
			}()
			for i := range idx {
				hash, err := directory.HashPassword(rows[i].Password)
				if err != nil {
					fail(fmt.Errorf("line %d: %w", rows[i].Line, err))
					continue
				}
				hashes[i] = hash
			}
		})
	}
feed:
	for i := range rows {
		if rows[i].Password == "" {
			continue
		}
		select {
		case idx <- i:
		case <-ctx.Done():
			fail(ctx.Err())
			break feed
		}
	}
	close(idx)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return hashes, nil
}

// importer applies the rows of one file inside one transaction: existing
// usernames are updated, the others created in one batch. It collects
// every problem of every line; the caller rolls back when there is one.
type importer struct {
	p        auth.Principal
	rows     []csvio.Row
	hashes   []string // nil in a dry run: passwords are then not set
	defaults directory.Template
	template string

	sites     map[string]*directory.Site // nil value: no such site
	domains   domainIndex                // every site's domains (userscope.go)
	lines     []importLine
	bad       map[int]bool // row index -> has a problem
	created   []string
	updated   []string
	unchanged []string // existing users whose line changes nothing: not written
}

func (im *importer) fail(i int, column, reason string) {
	im.lines = append(im.lines, importLine{line: im.rows[i].Line, column: column, reason: reason})
	im.bad[i] = true
}

// failErr reports a directory validation error or store error of row i
// under the columns of the members it names; false when err is neither
// (an internal error).
func (im *importer) failErr(i int, err error) bool {
	var ve directory.ValidationError
	for _, e := range flattenErrors(err) {
		switch x := e.(type) {
		case *directory.ValidationError:
			ve.Errors = append(ve.Errors, x.Errors...)
		case *store.ConflictError:
			ve.Add(x.Field, conflictReason(x, hidesOwners(im.p)))
		case *store.ReferenceError:
			ve.Add(x.Field, referenceReason(x))
		case *store.StaleError:
			ve.Add("", "the user changed during the import; try again")
		default:
			return false
		}
	}
	for _, le := range csvio.LineErrorsFrom(im.rows[i].Line, &ve) {
		im.fail(i, strings.ToLower(le.Column), le.Reason)
	}
	return true
}

func (im *importer) site(ctx context.Context, tx store.Tx, name string) (*directory.Site, error) {
	if s, ok := im.sites[name]; ok {
		return s, nil
	}
	s, err := tx.GetSite(ctx, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		im.sites[name] = nil
		return nil, nil
	case err != nil:
		return nil, err
	}
	im.sites[name] = &s
	return &s, nil
}

func (im *importer) run(ctx context.Context, tx store.Tx) error {
	im.sites = map[string]*directory.Site{}
	im.bad = map[int]bool{}
	var err error
	if im.domains, err = readDomains(ctx, tx); err != nil {
		return err
	}
	var creates []*directory.User
	var createRows []int
	var updated, unchanged []int
	for i := range im.rows {
		row := &im.rows[i]
		cur, err := tx.GetUserByUsername(ctx, row.Username)
		switch {
		case errors.Is(err, store.ErrNotFound):
			u, ok, err := im.newUser(ctx, tx, i)
			if err != nil {
				return err
			}
			if ok {
				creates = append(creates, u)
				createRows = append(createRows, i)
			}
		case err != nil:
			return err
		default:
			changed, err := im.update(ctx, tx, i, cur)
			switch {
			case err != nil:
				return err
			case im.bad[i]:
			case changed:
				updated = append(updated, i)
			default:
				unchanged = append(unchanged, i)
			}
		}
	}
	if len(creates) > 0 {
		if err := tx.CreateUsers(ctx, creates); err != nil {
			if !im.failBatch(createRows, err) {
				return err
			}
		}
	}
	for _, i := range createRows {
		if !im.bad[i] {
			im.created = append(im.created, im.rows[i].Username)
		}
	}
	for _, i := range updated {
		im.updated = append(im.updated, im.rows[i].Username)
	}
	for _, i := range unchanged {
		im.unchanged = append(im.unchanged, im.rows[i].Username)
	}
	return nil
}

// failBatch reports the problems of Tx.CreateUsers, each on its row.
func (im *importer) failBatch(rows []int, err error) bool {
	var walk func(error) bool
	walk = func(err error) bool {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				if !walk(e) {
					return false
				}
			}
			return true
		}
		ie, ok := err.(*store.ItemError)
		if !ok || ie.Index < 0 || ie.Index >= len(rows) {
			return false
		}
		return im.failErr(rows[ie.Index], ie.Err)
	}
	return walk(err)
}

// newUser builds the user row i creates; ok false when the row has a
// problem (reported).
func (im *importer) newUser(ctx context.Context, tx store.Tx, i int) (*directory.User, bool, error) {
	row := &im.rows[i]
	u := row.User(im.defaults)
	if im.hashes != nil && im.hashes[i] != "" {
		u.PasswordHash = im.hashes[i]
	}
	u.Site = lowerTrim(u.Site)
	if u.Site != "" {
		if !im.p.CanWriteUser(u.Site) {
			im.fail(i, csvio.ColSite, fmt.Sprintf("site %s is outside your site %s", u.Site, im.p.Site))
			return nil, false, nil
		}
		s, err := im.site(ctx, tx, u.Site)
		if err != nil {
			return nil, false, err
		}
		switch {
		case s == nil:
			im.fail(i, csvio.ColSite, "no site is named "+u.Site)
			return nil, false, nil
		case u.PrimaryAddress != "":
		case len(s.Domains) == 0:
			im.fail(i, csvio.ColEmail, fmt.Sprintf("required: site %s has no mail domain to make a default address from", u.Site))
			return nil, false, nil
		default:
			u.PrimaryAddress = u.Username + "@" + s.Domains[0]
		}
	}
	if err := u.Normalize(); err != nil {
		im.failErr(i, err)
		return nil, false, nil
	}
	if err := checkReach(im.domains, im.p, &directory.User{Groups: im.defaults.Groups}, &u).all(); err != nil {
		im.failErr(i, err)
		return nil, false, nil
	}
	return &u, true, nil
}

// update applies row i to the existing user cur: what the row gives
// replaces, what it leaves out (an absent column, an empty cell) stays. A
// row that changes nothing writes nothing, as a PATCH that changes nothing
// (changed false); a row with a problem is reported (im.bad).
func (im *importer) update(ctx context.Context, tx store.Tx, i int, cur directory.User) (changed bool, err error) {
	row := &im.rows[i]
	if !im.p.CanWriteUser(cur.Site) {
		im.fail(i, csvio.ColUsername, fmt.Sprintf("username %s belongs to a user outside your site %s", row.Username, im.p.Site))
		return false, nil
	}
	u := cur
	u.Aliases, u.Groups = slices.Clone(cur.Aliases), slices.Clone(cur.Groups)
	if strings.TrimSpace(row.Description) != "" {
		u.DisplayName = row.Description
	}
	g := row.Given
	if g.Email {
		u.PrimaryAddress = row.Email
	}
	if g.Aliases {
		u.Aliases = slices.Clone(row.Aliases)
	}
	if g.Site {
		if !im.p.CanWriteUser(row.Site) {
			im.fail(i, csvio.ColSite, fmt.Sprintf("site %s is outside your site %s", row.Site, im.p.Site))
			return false, nil
		}
		u.Site = row.Site
	}
	if g.Groups {
		u.Groups = slices.Clone(row.Groups)
	}
	if g.InternetReceive {
		u.Permissions.InternetReceive = row.InternetReceive
	}
	if g.InternetSend {
		u.Permissions.InternetSend = row.InternetSend
	}
	if g.Enabled {
		u.Enabled = row.Enabled
	}
	if g.QuotaBytes {
		u.QuotaBytes = row.QuotaBytes
	}
	switch {
	case row.PasswordHash != "":
		u.PasswordHash = row.PasswordHash
	case im.hashes != nil && im.hashes[i] != "":
		u.PasswordHash = im.hashes[i]
	}
	if err := u.Normalize(); err != nil {
		im.failErr(i, err)
		return false, nil
	}
	slices.Sort(u.Groups) // as the store keeps them
	// A plain password always changes the hash (a new salt), also in a dry
	// run, where it is not hashed.
	if row.Password == "" && unchanged(cur, u) {
		return false, nil
	}
	if err := checkReach(im.domains, im.p, &cur, &u).all(); err != nil {
		im.failErr(i, err)
		return false, nil
	}
	if err := tx.UpdateUser(ctx, &u, cur.Version); err != nil {
		if !im.failErr(i, err) {
			return false, err
		}
		return false, nil
	}
	return true, nil
}

// audit records the import as one entry; the change log has every user.
func (im *importer) audit(ctx context.Context, tx store.Tx) error {
	summary := map[string]map[string]any{
		"created": {"to": len(im.created)},
		"updated": {"to": len(im.updated)},
	}
	if im.template != "" {
		summary["template"] = map[string]any{"to": lowerTrim(im.template)}
	}
	diff, err := json.Marshal(summary)
	if err != nil {
		return err
	}
	return tx.Audit(ctx, &directory.AuditEntry{Actor: im.p.Actor(), Action: "import", TargetKind: directory.KindUser, Diff: diff})
}

// lineFields turns line problems into the API's field errors, with the
// column's position taken from the file's header, ordered by line and
// column.
func lineFields(body []byte, lines []importLine) []usersapi.FieldError {
	pos := headerPositions(body)
	out := make([]usersapi.FieldError, 0, len(lines))
	for _, l := range lines {
		fe := usersapi.FieldError{Field: l.column, Line: l.line, Reason: l.reason}
		if l.column != "" {
			fe.Column = pos[l.column]
		}
		out = append(out, fe)
	}
	slices.SortStableFunc(out, func(a, b usersapi.FieldError) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	return out
}

// headerPositions maps the lower-cased names of the file's header to
// their positions, counting from 1.
func headerPositions(body []byte) map[string]int {
	r := csv.NewReader(bufio.NewReader(bytes.NewReader(bytes.TrimPrefix(body, []byte("\uFEFF")))))
	r.FieldsPerRecord = -1
	r.LazyQuotes = true
	r.TrimLeadingSpace = true
	header, err := r.Read()
	pos := map[string]int{}
	if err != nil {
		return pos
	}
	for i, h := range header {
		name := strings.ToLower(strings.TrimSpace(h))
		if _, dup := pos[name]; !dup {
			pos[name] = i + 1
		}
	}
	return pos
}
