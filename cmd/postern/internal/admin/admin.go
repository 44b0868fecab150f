// Package admin is the administration side of the postern command: the
// subcommands (sites, users, groups, pop3-accounts, shared-mailboxes,
// templates, tokens, audit, import, export) that manage the directory of the
// users service over its HTTP API, through the generated client
// (api/usersclient) only.
//
// Every command reads the server's URL from --server or $POSTERN_SERVER and
// the API token from --token or $POSTERN_TOKEN; the token is never printed,
// not even in an error. Output is aligned tables for lists and "key: value"
// blocks for single objects, or with --json the API's own objects. Exit
// status: 0 done, 1 the API or the network failed, 2 the command line is
// wrong.
package admin

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"
)

// DefaultServer is the users service's URL when neither --server nor
// $POSTERN_SERVER is given.
const DefaultServer = "http://127.0.0.1:8080"

// Env is what a command may touch of the outside world, so that tests can
// run commands in-process.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment ($POSTERN_SERVER, $POSTERN_TOKEN).
	Getenv func(string) string
	// StdinTerminal says that Stdin is an interactive terminal: passwords
	// are prompted for only then.
	StdinTerminal bool
	// StderrTerminal says that Stderr is an interactive terminal: the
	// import progress bar is drawn only then.
	StderrTerminal bool
	// ReadPassword reads one line from the terminal without echoing it
	// (the prompt has been written to Stderr). Used only when
	// StdinTerminal is true.
	ReadPassword func() (string, error)
	// UserAgent is sent with every request.
	UserAgent string
}

// Main runs an administration command (args[0] is its noun) with the
// process's standard input, environment and terminal; SIGINT and SIGTERM
// cancel the request in flight.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, version string) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := Env{
		Stdin:          os.Stdin,
		Stdout:         stdout,
		Stderr:         stderr,
		Getenv:         os.Getenv,
		StdinTerminal:  term.IsTerminal(int(os.Stdin.Fd())),
		StderrTerminal: isTerminal(stderr),
		ReadPassword: func() (string, error) {
			b, err := term.ReadPassword(int(os.Stdin.Fd()))
			return string(b), err
		},
		UserAgent: "postern/" + version,
	}
	return Run(ctx, env, args)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// verb is one subcommand of a noun ("users add").
type verb struct {
	name    string
	summary string
	run     func(s *session, args []string) error
}

// noun is a top-level administration command; a noun without verbs runs
// run directly ("postern audit").
type noun struct {
	name    string
	summary string
	verbs   []verb
	run     func(s *session, args []string) error
}

var nouns = []noun{
	{name: "sites", summary: "locations, with their mail domains and SMTP endpoints", verbs: []verb{
		{"list", "list the sites", sitesList},
		{"show", "show a site", sitesShow},
		{"add", "create a site", sitesAdd},
		{"edit", "change a site", sitesEdit},
		{"delete", "delete a site", sitesDelete},
	}},
	{name: "users", summary: "users: list, show, add, edit, delete, move to another site, passwd", verbs: []verb{
		{"list", "list the users", usersList},
		{"show", "show a user", usersShow},
		{"add", "create a user", usersAdd},
		{"edit", "change a user", usersEdit},
		{"delete", "delete a user", usersDelete},
		{"move", "move a user to another site", usersMove},
		{"passwd", "set a user's password", usersPasswd},
	}},
	{name: "groups", summary: "mail groups (distribution lists)", verbs: []verb{
		{"list", "list the groups", groupsList},
		{"show", "show a group and its members", groupsShow},
		{"add", "create a group", groupsAdd},
		{"edit", "change a group", groupsEdit},
		{"delete", "delete a group", groupsDelete},
	}},
	{name: "pop3-accounts", summary: "the ISP POP3 mailboxes each site downloads", verbs: []verb{
		{"list", "list the POP3 accounts", pop3List},
		{"show", "show a POP3 account", pop3Show},
		{"add", "create a POP3 account", pop3Add},
		{"edit", "change a POP3 account", pop3Edit},
		{"delete", "delete a POP3 account", pop3Delete},
	}},
	{name: "shared-mailboxes", summary: "unified external addresses worked by staff", verbs: []verb{
		{"list", "list the shared mailboxes", sharedList},
		{"show", "show a shared mailbox", sharedShow},
		{"add", "create a shared mailbox", sharedAdd},
		{"edit", "change a shared mailbox", sharedEdit},
		{"delete", "delete a shared mailbox", sharedDelete},
	}},
	{name: "templates", summary: "defaults for new users (users add --template, import --template)", verbs: []verb{
		{"list", "list the templates", templatesList},
		{"show", "show a template", templatesShow},
		{"add", "create a template", templatesAdd},
		{"edit", "change a template", templatesEdit},
		{"delete", "delete a template", templatesDelete},
	}},
	{name: "tokens", summary: "API tokens and their roles", verbs: []verb{
		{"list", "list the tokens", tokensList},
		{"show", "show a token", tokensShow},
		{"add", "create a token and print its secret, once", tokensAdd},
		{"delete", "revoke a token", tokensDelete},
	}},
	{name: "audit", summary: "the audit log of every write, newest first", run: auditList},
	{name: "import", summary: "import users from a CSV file", run: importUsers},
	{name: "export", summary: "export users as CSV or JSON", run: exportUsers},
}

// IsCommand reports whether name is one of this package's commands.
func IsCommand(name string) bool {
	_, ok := findNoun(name)
	return ok
}

func findNoun(name string) (noun, bool) {
	for _, n := range nouns {
		if n.name == name {
			return n, true
		}
	}
	return noun{}, false
}

// Usage lists the administration commands, for postern's usage text.
func Usage() string {
	var b strings.Builder
	for _, n := range nouns {
		fmt.Fprintf(&b, "  %-18s %s\n", n.name, n.summary)
	}
	b.WriteString("\nThe administration commands above talk to the users service at --server\n" +
		"(or $POSTERN_SERVER, default " + DefaultServer + ") with the API token --token\n" +
		"(or $POSTERN_TOKEN); --json prints the API's objects instead of tables.\n")
	return b.String()
}

// Run runs the administration command args[0] with the rest of args and
// returns the exit status.
func Run(ctx context.Context, env Env, args []string) int {
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	s := &session{ctx: ctx, env: env}
	return s.report(dispatch(s, args))
}

func dispatch(s *session, args []string) error {
	if len(args) == 0 {
		return usageErrorf("no command")
	}
	n, ok := findNoun(args[0])
	if !ok {
		return usageErrorf("unknown command %q", args[0])
	}
	if n.run != nil {
		s.name = "postern " + n.name
		return n.run(s, args[1:])
	}
	if len(args) < 2 || args[1] == "-h" || args[1] == "--help" || args[1] == "help" {
		nounUsage(s.env.Stderr, n)
		if len(args) < 2 {
			return reported(2)
		}
		return nil
	}
	for _, v := range n.verbs {
		if v.name == args[1] {
			s.name = "postern " + n.name + " " + v.name
			return v.run(s, args[2:])
		}
	}
	nounUsage(s.env.Stderr, n)
	return usageErrorf("%s: unknown command %q", n.name, args[1])
}

func nounUsage(w io.Writer, n noun) {
	fmt.Fprintf(w, "usage: postern %s <command> [flags]\n\ncommands:\n", n.name)
	names := make([]string, 0, len(n.verbs))
	for _, v := range n.verbs {
		names = append(names, v.name)
	}
	width := 0
	for _, name := range names {
		width = max(width, len(name))
	}
	for _, v := range n.verbs {
		fmt.Fprintf(w, "  %-*s  %s\n", width, v.name, v.summary)
	}
	fmt.Fprintf(w, "\nRun \"postern %s <command> -h\" for a command's flags.\n", n.name)
}
