package admin

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"unicode"

	"github.com/postern/postern/api/usersclient"
)

// session is one command's run: its environment, its common flags and the
// client built from them.
type session struct {
	ctx  context.Context
	env  Env
	name string // "postern users add"

	server string
	token  string
	json   bool

	client *usersclient.ClientWithResponses

	userNames  map[string]string // id → username, for display
	groupNames map[string]string // id → name, for display
}

// flags is a command's flag set with the common flags --server, --token and
// --json. synopsis follows the command's name in the usage line ("NAME
// [flags]"); help is a paragraph printed under it.
func (s *session) flags(synopsis, help string) *flag.FlagSet {
	fs := flag.NewFlagSet(s.name, flag.ContinueOnError)
	fs.SetOutput(s.env.Stderr)
	server := s.env.Getenv("POSTERN_SERVER")
	if server == "" {
		server = DefaultServer
	}
	fs.StringVar(&s.server, "server", server, "the users service's `URL` ($POSTERN_SERVER)")
	// The default is not shown, so that -h never prints the token.
	s.token = s.env.Getenv("POSTERN_TOKEN")
	fs.Func("token", "the API `token` ($POSTERN_TOKEN; the variable keeps it out of the process list)", func(v string) error {
		s.token = v
		return nil
	})
	fs.BoolVar(&s.json, "json", false, "print the API's JSON objects instead of a table")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: %s %s\n", s.name, synopsis)
		if help != "" {
			fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(help))
		}
		fmt.Fprintf(w, "\nflags:\n")
		fs.PrintDefaults()
	}
	return fs
}

// ParseArgs parses args into fs, flags and arguments in any order ("users
// add john --site hq" as well as "users add --site hq john"; "--" ends the
// flags), and returns the arguments. Its error is fs.Parse's: flag.ErrHelp
// for -h, otherwise one the flag package has already printed with the usage.
// Every command of the binary parses its command line with it.
func ParseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := args[:len(args)-len(rest)]
		if len(consumed) > 0 && consumed[len(consumed)-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parse parses args into fs (ParseArgs) and checks that exactly n
// arguments remain.
func (s *session) parse(fs *flag.FlagSet, args []string, n int) ([]string, error) {
	pos, err := ParseArgs(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, reported(2) // the flag package printed the error and the usage
	}
	if len(pos) != n {
		fs.Usage()
		switch n {
		case 0:
			return nil, usageErrorf("unexpected argument %q", pos[0])
		case 1:
			return nil, usageErrorf("want 1 argument, got %d", len(pos))
		default:
			return nil, usageErrorf("want %d arguments, got %d", n, len(pos))
		}
	}
	return pos, nil
}

// given is the set of flags given on the command line.
func given(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// connect builds the client from --server and --token.
func (s *session) connect() (*usersclient.ClientWithResponses, error) {
	if s.client != nil {
		return s.client, nil
	}
	s.token = strings.TrimSpace(s.token)
	if s.token == "" {
		return nil, usageErrorf("no API token: give --token or set POSTERN_TOKEN")
	}
	if strings.IndexFunc(s.token, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return nil, usageErrorf("the API token holds spaces or control characters")
	}
	u, err := url.Parse(s.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usageErrorf("--server %q is not an http:// or https:// URL", s.server)
	}
	if u.User != nil {
		return nil, usageErrorf("--server must not hold a user or password; the token is given with --token")
	}
	token, agent := s.token, s.env.UserAgent
	c, err := usersclient.NewClientWithResponses(s.server,
		usersclient.WithHTTPClient(&http.Client{}),
		usersclient.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
			req.Header.Set("Authorization", "Bearer "+token)
			if agent != "" {
				req.Header.Set("User-Agent", agent)
			}
			return nil
		}))
	if err != nil {
		return nil, err
	}
	s.client = c
	return c, nil
}

// ---------------------------------------------------------------- errors

// usageError is a wrong command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// reportedError is a failure already explained on stderr.
type reportedError struct{ code int }

func (e *reportedError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func reported(code int) error { return &reportedError{code: code} }

// problemError is an answer of the API other than the one expected: an RFC
// 9457 problem, or whatever else the server sent.
type problemError struct {
	status  int
	problem usersclient.Problem
}

func (e *problemError) Error() string {
	title := e.problem.Title
	if title == "" {
		title = fmt.Sprintf("HTTP %d %s", e.status, http.StatusText(e.status))
	}
	if e.problem.Detail != "" {
		return title + ": " + e.problem.Detail
	}
	return title
}

// expect turns an answer other than want into a *problemError.
func expect(r *http.Response, body []byte, want int) error {
	if r.StatusCode == want {
		return nil
	}
	e := &problemError{status: r.StatusCode}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if strings.HasSuffix(mt, "json") && json.Unmarshal(body, &e.problem) == nil && e.problem.Title != "" {
		return e
	}
	e.problem = usersclient.Problem{Status: r.StatusCode}
	if mt == "text/plain" {
		e.problem.Detail = strings.TrimSpace(clip(string(body), 200))
	}
	return e
}

// answer checks that the API answered want with a body the client decoded
// into v.
func answer[T any](r *http.Response, body []byte, want int, v *T) (*T, error) {
	if err := expect(r, body, want); err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("the server answered %d with %q content, not the API's JSON", r.StatusCode, r.Header.Get("Content-Type"))
	}
	return v, nil
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// report prints err, if any, and returns the exit status.
func (s *session) report(err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if e, ok := errors.AsType[*reportedError](err); ok {
		return e.code
	}
	if e, ok := errors.AsType[*usageError](err); ok {
		s.errorf("postern: %s\n", e.msg)
		return 2
	}
	if e, ok := errors.AsType[*problemError](err); ok {
		s.printProblem(e, fieldErrorLine)
		return 1
	}
	s.errorf("postern: %v\n", err)
	return 1
}

// printProblem prints a problem and each of its field errors on its own
// line, formatted by line.
func (s *session) printProblem(e *problemError, line func(usersclient.FieldError) string) {
	s.errorf("postern: %s\n", e.Error())
	for _, fe := range e.problem.Errors {
		if fe == (usersclient.FieldError{Reason: e.problem.Detail}) {
			continue // the detail again, already printed
		}
		s.errorf("%s\n", line(fe))
	}
	if e.status == http.StatusUnauthorized {
		s.errorf("  (check --token or $POSTERN_TOKEN)\n")
	}
}

// fieldErrorLine formats the field error of a JSON request, or of a CSV line.
func fieldErrorLine(fe usersclient.FieldError) string {
	switch {
	case fe.Line > 0 && fe.Column > 0 && fe.Field != "":
		return fmt.Sprintf("  line %d, column %d (%s): %s", fe.Line, fe.Column, fe.Field, fe.Reason)
	case fe.Line > 0 && fe.Field != "":
		return fmt.Sprintf("  line %d (%s): %s", fe.Line, fe.Field, fe.Reason)
	case fe.Line > 0 && fe.Column > 0:
		return fmt.Sprintf("  line %d, column %d: %s", fe.Line, fe.Column, fe.Reason)
	case fe.Line > 0:
		return fmt.Sprintf("  line %d: %s", fe.Line, fe.Reason)
	case fe.Field != "":
		return fmt.Sprintf("  %s: %s", fe.Field, fe.Reason)
	default:
		return "  " + fe.Reason
	}
}

// errorf writes to stderr with the token masked, wherever it came from.
func (s *session) errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if t := strings.TrimSpace(s.token); t != "" {
		msg = strings.ReplaceAll(msg, t, "***")
	}
	fmt.Fprint(s.env.Stderr, sanitize(msg, true))
}
