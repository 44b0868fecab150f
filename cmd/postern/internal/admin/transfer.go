package admin

import (
	"github.com/postern/postern/internal/atomicfile"

	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/postern/postern/api/usersclient"
)

func importUsers(s *session, args []string) error {
	fs := s.flags("FILE.csv [flags]", `Import users from a CSV file ("-" for standard input). The header names
the columns, in any order: username and description are required, and so
is one of password (in clear) or password_hash on every line, except that
in a file shaped like an export (a password_hash column, no password
column) an empty hash stands for a user without a password. email, aliases
(;-separated), site, groups (;-separated), internet_receive, internet_send,
enabled and quota_bytes are optional. A user whose username exists is
updated with what its line gives (an empty cell keeps the current value; a
line that changes nothing writes nothing and is counted as unchanged), any
other is created. Addresses must be in a mail domain of a site; with a
site_admin token, of its own site, and the groups may not change.

The import is all or nothing: with any bad line nothing is written, and
every bad line is listed as FILE:LINE: column NAME: reason (exit status 1).
--dry-run checks the file and says what would change, writing nothing.`)
	dryRun := fs.Bool("dry-run", false, "check the file and report what would change, without writing anything")
	template := fs.String("template", "", "the `template` giving the defaults of the columns left out")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	name, label := pos[0], pos[0]
	c, err := s.connect()
	if err != nil {
		return err
	}
	var body io.Reader = s.env.Stdin
	size := int64(-1)
	if name == "-" {
		label = "<stdin>"
	} else {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return usageErrorf("%s is a directory", name)
		}
		if fi.Mode().IsRegular() {
			size = fi.Size()
		}
		body = f
	}
	params := usersclient.ImportUsersParams{}
	if *dryRun {
		params.DryRun = dryRun
	}
	if given(fs)["template"] {
		params.Template = template
	}

	// The progress bar counts the bytes the HTTP client reads from the file,
	// on stderr, only for people watching a terminal.
	var bar *progressbar.ProgressBar
	if s.env.StderrTerminal && size > 0 {
		stderr := s.env.Stderr
		bar = progressbar.NewOptions64(size,
			progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription("uploading "+filepath.Base(name)),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(stderr) }))
		body = io.TeeReader(body, bar)
	}
	var editors []usersclient.RequestEditorFn
	if size >= 0 {
		// The client cannot tell the length of a wrapped reader; without it
		// the upload would be chunked.
		editors = append(editors, func(_ context.Context, req *http.Request) error {
			req.ContentLength = size
			return nil
		})
	}
	r, err := c.ImportUsersWithBodyWithResponse(s.ctx, &params, "text/csv", body, editors...)
	if bar != nil && !bar.IsFinished() {
		_ = bar.Exit()
	}
	if err != nil {
		return err
	}
	if r.StatusCode() == http.StatusUnprocessableEntity {
		e := expect(r.HTTPResponse, r.Body, http.StatusOK)
		if pe, ok := errors.AsType[*problemError](e); ok {
			s.printProblem(pe, func(fe usersclient.FieldError) string { return csvErrorLine(label, fe) })
			return reported(1)
		}
		return e
	}
	res, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	if s.json {
		if err := s.printJSON(res); err != nil {
			return err
		}
	} else {
		same := ""
		if res.Unchanged != nil && len(*res.Unchanged) > 0 {
			same = fmt.Sprintf(", %s unchanged", countUsers(len(*res.Unchanged)))
		}
		if res.DryRun {
			fmt.Fprintf(s.env.Stdout, "dry run, nothing written: would create %s and update %s%s\n", countUsers(len(res.Created)), countUsers(len(res.Updated)), same)
		} else {
			fmt.Fprintf(s.env.Stdout, "created %s, updated %s%s\n", countUsers(len(res.Created)), countUsers(len(res.Updated)), same)
		}
	}
	for _, fe := range res.Errors {
		s.errorf("%s\n", csvErrorLine(label, fe))
	}
	if len(res.Errors) > 0 {
		return reported(1)
	}
	return nil
}

func countUsers(n int) string {
	if n == 1 {
		return "1 user"
	}
	return strconv.Itoa(n) + " users"
}

// csvErrorLine formats a bad line of an import as FILE:LINE: column NAME: reason.
func csvErrorLine(file string, fe usersclient.FieldError) string {
	loc := file
	if fe.Line > 0 {
		loc += ":" + strconv.Itoa(fe.Line)
	}
	switch {
	case fe.Field != "":
		return fmt.Sprintf("%s: column %s: %s", loc, fe.Field, fe.Reason)
	case fe.Column > 0:
		return fmt.Sprintf("%s: column %d: %s", loc, fe.Column, fe.Reason)
	default:
		return fmt.Sprintf("%s: %s", loc, fe.Reason)
	}
}

func exportUsers(s *session, args []string) error {
	fs := s.flags("[flags]", `Export the users, ordered by username, as CSV (the columns of import) or
JSON. Importing an export gives the same users back, with the same passwords:
for an admin token, and for a site_admin token (which exports its own site's
users only), it holds the password hashes, so -o creates the file readable
by its owner only.`)
	format := fs.String("format", "", "csv or json (default csv; json with --json)")
	site := fs.String("site", "", "only the users whose home site is `site`")
	out := fs.String("o", "", "write to `file` instead of standard output")
	if _, err := s.parse(fs, args, 0); err != nil {
		return err
	}
	set := given(fs)
	f := usersclient.ExportFormatCsv
	if s.json {
		f = usersclient.ExportFormatJSON
	}
	if set["format"] {
		v, err := oneOf("format", *format, usersclient.ExportFormat.Valid, usersclient.ExportFormatCsv, usersclient.ExportFormatJSON)
		if err != nil {
			return err
		}
		f = v
	}
	params := usersclient.ExportUsersParams{Format: &f}
	if set["site"] {
		params.Site = site
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	r, err := c.ExportUsersWithResponse(s.ctx, &params)
	if err != nil {
		return err
	}
	if err := expect(r.HTTPResponse, r.Body, http.StatusOK); err != nil {
		return err
	}
	if *out == "" || *out == "-" {
		_, err := s.env.Stdout.Write(r.Body)
		return err
	}
	if err := atomicfile.WriteFile(*out, r.Body, 0o600); err != nil {
		return err
	}
	s.errorf("postern: wrote %s (%d bytes)\n", *out, len(r.Body))
	return nil
}
