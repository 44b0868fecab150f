package admin

import (
	"flag"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/postern/postern/api/usersclient"
)

func pop3List(s *session, args []string) error {
	fs := s.flags("[flags]", "List the POP3 accounts, by name. Passwords are never shown.")
	site := fs.String("site", "", "only the accounts downloaded by `site`")
	lo := listFlags(fs)
	if _, err := s.parse(fs, args, 0); err != nil {
		return err
	}
	params := usersclient.ListPOP3AccountsParams{}
	if given(fs)["site"] {
		params.Site = site
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	p, err := collect(lo, func(cursor *string, limit *int) (page[usersclient.POP3Account], error) {
		params.Cursor, params.Limit = cursor, limit
		return pageFrom[usersclient.POP3Account](c.ListPOP3Accounts(s.ctx, &params))
	})
	if err != nil {
		return err
	}
	if s.json {
		return s.printJSON(usersclient.POP3AccountList{Items: p.items, NextCursor: p.next, Total: p.total})
	}
	rows := make([][]string, 0, len(p.items))
	for _, a := range p.items {
		rows = append(rows, []string{a.Name, a.Site, fmt.Sprintf("%s:%d", a.Host, a.Port), string(a.TLS), a.Username,
			string(a.Mode), keepString(a.Keep), interval(a.PollIntervalSeconds), yesNo(a.Enabled)})
	}
	return s.printList([]string{"NAME", "SITE", "SERVER", "TLS", "USERNAME", "MODE", "KEEP", "POLL", "ENABLED"}, rows, p.next, p.total)
}

func interval(seconds int) string { return (time.Duration(seconds) * time.Second).String() }

func (s *session) printPOP3(a *usersclient.POP3Account) error {
	if s.json {
		return s.printJSON(a)
	}
	fields := []field{
		{"id", a.ID},
		{"name", a.Name},
		{"site", a.Site},
		{"host", a.Host},
		{"port", strconv.Itoa(a.Port)},
		{"tls", string(a.TLS)},
	}
	if a.AllowInsecure {
		fields = append(fields, field{"allow insecure", yesNo(a.AllowInsecure)})
	}
	if a.TLSSkipVerify {
		fields = append(fields, field{"tls skip verify", yesNo(a.TLSSkipVerify)})
	}
	if a.TLSFingerprint != "" {
		fields = append(fields, field{"tls fingerprint", a.TLSFingerprint})
	}
	fields = append(fields,
		field{"auth", string(a.Auth)},
		field{"username", a.Username},
		field{"mode", string(a.Mode)})
	if a.Mode == usersclient.POP3ModeSingle {
		fields = append(fields, field{"target user", s.username(a.TargetUser)})
	} else {
		fields = append(fields,
			field{"envelope headers", list(a.EnvelopeHeaders)},
			field{"local domains", list(a.LocalDomains)},
			field{"postmaster", s.username(a.Postmaster)},
			field{"fallback to headers", yesNo(a.FallbackToHeaders)})
	}
	fields = append(fields,
		field{"keep", keepString(a.Keep)},
		field{"poll interval", interval(a.PollIntervalSeconds)},
		field{"enabled", yesNo(a.Enabled)},
		field{"version", itoa(a.Version)},
		field{"created", timestamp(a.CreatedAt)},
		field{"updated", timestamp(a.UpdatedAt)})
	return s.printFields(fields)
}

func pop3Show(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", "Show a POP3 account (never its password).")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.pop3ID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.GetPOP3AccountWithResponse(s.ctx, id, nil)
	if err != nil {
		return err
	}
	a, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printPOP3(a)
}

// pop3Fields are the flags shared by add and edit.
type pop3Fields struct {
	host, tls, fingerprint, auth, username, site, mode, target, postmaster, keep *string
	port                                                                         *int
	allowInsecure, skipVerify, fallback, enabled                                 *bool
	headers, domains                                                             *listValue
	poll                                                                         *time.Duration
	pwStdin                                                                      *bool
	set                                                                          map[string]bool
}

func addPOP3Flags(fs *flag.FlagSet) *pop3Fields {
	return &pop3Fields{
		host:          fs.String("host", "", "the ISP's POP3 `host`"),
		port:          fs.Int("port", 0, "the `port` (default 995 for --tls tls, 110 otherwise)"),
		tls:           fs.String("tls", "", "the TLS `mode`: tls, starttls or none (none needs --allow-insecure)"),
		allowInsecure: fs.Bool("allow-insecure", false, "allow --tls none (the password crosses the network in clear)"),
		skipVerify:    fs.Bool("tls-skip-verify", false, "do not verify the server's certificate"),
		fingerprint:   fs.String("tls-fingerprint", "", "pin the server certificate by its SHA-256 (64 `hex` digits)"),
		auth:          fs.String("auth", "", "the login `method`: user or apop"),
		username:      fs.String("username", "", "the `login` at the ISP"),
		site:          fs.String("site", "", "the `site` that downloads the account"),
		mode:          fs.String("mode", "", "the delivery `mode`: single (all mail to --target-user) or multi (by envelope headers)"),
		target:        fs.String("target-user", "", "single mode: the `user` (username or id) who gets the mail"),
		postmaster:    fs.String("postmaster", "", "multi mode: the `user` (username or id) who gets what matches no one"),
		headers:       listFlag(fs, "envelope-header", "multi mode: a `header` naming the recipient, in order"),
		domains:       listFlag(fs, "local-domain", "multi mode: a `domain` whose addresses are delivered locally"),
		fallback:      fs.Bool("fallback-to-headers", false, "multi mode: fall back to To/Cc when no envelope header matches"),
		keep:          fs.String("keep", "", "when downloaded mail is deleted at the ISP, the `policy`: delete_after_delivery, keep or keep_days:N"),
		poll:          fs.Duration("poll-interval", 0, "how often to download, such as 5m (30s to 24h)"),
		enabled:       fs.Bool("enabled", false, "download the account (--enabled=false to pause)"),
		pwStdin:       fs.Bool("password-stdin", false, "read the ISP password from the first line of standard input"),
	}
}

// pop3Choices are the flags that need checking or converting.
type pop3Choices struct {
	tls  *usersclient.TLSMode
	auth *usersclient.POP3Auth
	mode *usersclient.POP3Mode
	keep *usersclient.KeepPolicy
	poll *int // seconds
}

// check validates the enumerations and converts what needs it, before
// anything is sent.
func (f *pop3Fields) check() (c pop3Choices, err error) {
	if f.set["tls"] {
		v, err := oneOf("tls", *f.tls, usersclient.TLSMode.Valid, usersclient.TLSModeTLS, usersclient.TLSModeStarttls, usersclient.TLSModeNone)
		if err != nil {
			return c, err
		}
		c.tls = &v
	}
	if f.set["auth"] {
		v, err := oneOf("auth", *f.auth, usersclient.POP3Auth.Valid, usersclient.POP3AuthUser, usersclient.POP3AuthApop)
		if err != nil {
			return c, err
		}
		c.auth = &v
	}
	if f.set["mode"] {
		v, err := oneOf("mode", *f.mode, usersclient.POP3Mode.Valid, usersclient.POP3ModeSingle, usersclient.POP3ModeMulti)
		if err != nil {
			return c, err
		}
		c.mode = &v
	}
	if f.set["keep"] {
		k, err := parseKeep(*f.keep)
		if err != nil {
			return c, usageErrorf("%v", err)
		}
		c.keep = &k
	}
	if f.set["poll-interval"] {
		n, err := seconds("poll-interval", *f.poll)
		if err != nil {
			return c, err
		}
		c.poll = &n
	}
	return c, nil
}

// users resolves --target-user and --postmaster.
func (f *pop3Fields) users(s *session) (target, postmaster *string, err error) {
	if f.set["target-user"] && *f.target != "" {
		id, err := s.userID(*f.target)
		if err != nil {
			return nil, nil, err
		}
		target = &id
	} else if f.set["target-user"] {
		target = ptr("")
	}
	if f.set["postmaster"] && *f.postmaster != "" {
		id, err := s.userID(*f.postmaster)
		if err != nil {
			return nil, nil, err
		}
		postmaster = &id
	} else if f.set["postmaster"] {
		postmaster = ptr("")
	}
	return target, postmaster, nil
}

func pop3Add(s *session, args []string) error {
	fs := s.flags("NAME --host HOST --username LOGIN --site SITE [flags]", `Create a POP3 account. The ISP password is read from standard input with
--password-stdin, else asked for on the terminal; it is stored encrypted and
never shown again. Single mode needs --target-user, multi mode --postmaster.`)
	f := addPOP3Flags(fs)
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	f.set = given(fs)
	for _, required := range []string{"host", "username", "site"} {
		if !f.set[required] {
			return usageErrorf("--%s is required", required)
		}
	}
	ch, err := f.check()
	if err != nil {
		return err
	}
	body := usersclient.POP3AccountCreate{
		Name: pos[0], Host: *f.host, Username: *f.username, Site: *f.site,
		TLS: ch.tls, Auth: ch.auth, Mode: ch.mode, Keep: ch.keep, PollIntervalSeconds: ch.poll,
	}
	if f.set["port"] {
		body.Port = f.port
	}
	if f.set["allow-insecure"] {
		body.AllowInsecure = f.allowInsecure
	}
	if f.set["tls-skip-verify"] {
		body.TLSSkipVerify = f.skipVerify
	}
	if f.set["tls-fingerprint"] {
		body.TLSFingerprint = f.fingerprint
	}
	if f.set["envelope-header"] {
		body.EnvelopeHeaders = ptr(f.headers.list())
	}
	if f.set["local-domain"] {
		body.LocalDomains = ptr(f.domains.list())
	}
	if f.set["fallback-to-headers"] {
		body.FallbackToHeaders = f.fallback
	}
	if f.set["enabled"] {
		body.Enabled = f.enabled
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	if body.TargetUser, body.Postmaster, err = f.users(s); err != nil {
		return err
	}
	pw, err := s.password(*f.pwStdin, "the POP3 account "+pos[0], false)
	if err != nil {
		return err
	}
	body.Password = &pw
	r, err := c.CreatePOP3AccountWithResponse(s.ctx, body)
	if err != nil {
		return err
	}
	a, err := answer(r.HTTPResponse, r.Body, http.StatusCreated, r.JSON201)
	if err != nil {
		return err
	}
	return s.printPOP3(a)
}

func pop3Edit(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", `Change a POP3 account: only the flags given are changed; list flags
replace the whole list. --password-stdin replaces the ISP password.`)
	f := addPOP3Flags(fs)
	ifMatch := fs.String("if-match", "", "change only if the account still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	f.set = given(fs)
	ch, err := f.check()
	if err != nil {
		return err
	}
	patch := usersclient.POP3AccountPatch{TLS: ch.tls, Auth: ch.auth, Mode: ch.mode, Keep: ch.keep, PollIntervalSeconds: ch.poll}
	for name, dst := range map[string]**string{"host": &patch.Host, "username": &patch.Username, "site": &patch.Site, "tls-fingerprint": &patch.TLSFingerprint} {
		if f.set[name] {
			v := fs.Lookup(name).Value.String()
			*dst = &v
		}
	}
	if f.set["port"] {
		patch.Port = f.port
	}
	if f.set["allow-insecure"] {
		patch.AllowInsecure = f.allowInsecure
	}
	if f.set["tls-skip-verify"] {
		patch.TLSSkipVerify = f.skipVerify
	}
	if f.set["envelope-header"] {
		patch.EnvelopeHeaders = ptr(f.headers.list())
	}
	if f.set["local-domain"] {
		patch.LocalDomains = ptr(f.domains.list())
	}
	if f.set["fallback-to-headers"] {
		patch.FallbackToHeaders = f.fallback
	}
	if f.set["enabled"] {
		patch.Enabled = f.enabled
	}
	if !f.set["target-user"] && !f.set["postmaster"] && !*f.pwStdin && patch == (usersclient.POP3AccountPatch{}) {
		return usageErrorf("nothing to change")
	}
	if _, err := s.connect(); err != nil {
		return err
	}
	if patch.TargetUser, patch.Postmaster, err = f.users(s); err != nil {
		return err
	}
	if *f.pwStdin {
		pw, err := s.password(true, "", false)
		if err != nil {
			return err
		}
		patch.Password = &pw
	}
	id, err := s.pop3ID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.UpdatePOP3AccountWithResponse(s.ctx, id, &usersclient.UpdatePOP3AccountParams{IfMatch: etag(*ifMatch)}, patch)
	if err != nil {
		return err
	}
	a, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printPOP3(a)
}

func pop3Delete(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", "Delete a POP3 account; its site stops downloading it at its next sync.")
	ifMatch := fs.String("if-match", "", "delete only if the account still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.pop3ID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.DeletePOP3AccountWithResponse(s.ctx, id, &usersclient.DeletePOP3AccountParams{IfMatch: etag(*ifMatch)})
	if err != nil {
		return err
	}
	if err := expect(r.HTTPResponse, r.Body, http.StatusNoContent); err != nil {
		return err
	}
	s.say("deleted POP3 account %s\n", pos[0])
	return nil
}
