package directory

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// fields returns the field names of a *ValidationError (nil for nil), and
// fails the test on any other error.
func fields(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v (%T) is not a *ValidationError", err, err)
	}
	var out []string
	for _, fe := range ve.Errors {
		out = append(out, fe.Field)
	}
	return out
}

func wantFields(t *testing.T, err error, want ...string) {
	t.Helper()
	if got := fields(t, err); !reflect.DeepEqual(got, want) {
		t.Errorf("invalid fields = %q, want %q (error: %v)", got, want, err)
	}
}

func TestSiteNormalize(t *testing.T) {
	s := Site{Name: " HQ ", Domains: []string{"Example.ORG", "bücher.de"}, SMTPEndpoint: "GW.Example.org:25"}
	if err := s.Normalize(); err != nil {
		t.Fatal(err)
	}
	if s.Name != "hq" || !slices.Equal(s.Domains, []string{"example.org", "xn--bcher-kva.de"}) || s.SMTPEndpoint != "gw.example.org:25" {
		t.Errorf("normalized site = %+v", s)
	}
	empty := Site{Name: "branch"}
	if err := empty.Normalize(); err != nil || empty.Domains == nil {
		t.Errorf("site without domains: %v, domains %#v (want [])", err, empty.Domains)
	}
	bad := Site{Name: "Head Office", Description: "a\x00b", Domains: []string{"example.org", "EXAMPLE.org", "[1.2.3.4]"}, SMTPEndpoint: "gw.example.org"}
	wantFields(t, bad.Normalize(), "name", "description", "domains[1]", "domains[2]", "smtp_endpoint")
}

func validUser() User {
	return User{
		Username:       " John ",
		DisplayName:    "  John Doe ",
		PrimaryAddress: "John@Example.org",
		Aliases:        []string{"jd@example.org", "Doe@bücher.de"},
		Site:           "HQ",
		Groups:         []string{"Sales"},
		Enabled:        true,
		QuotaBytes:     1 << 30,
	}
}

func TestUserNormalize(t *testing.T) {
	u := validUser()
	if err := u.Normalize(); err != nil {
		t.Fatal(err)
	}
	want := User{Username: "john", DisplayName: "John Doe", PrimaryAddress: "john@example.org",
		Aliases: []string{"jd@example.org", "doe@xn--bcher-kva.de"}, Site: "hq", Groups: []string{"sales"},
		Enabled: true, QuotaBytes: 1 << 30}
	if !reflect.DeepEqual(u, want) {
		t.Errorf("normalized user = %+v\nwant %+v", u, want)
	}
	// Normalizing twice changes nothing.
	again := u
	if err := again.Normalize(); err != nil || !reflect.DeepEqual(again, u) {
		t.Errorf("second Normalize: %v, %+v", err, again)
	}

	bare := User{Username: "a", PrimaryAddress: "a@example.org", Site: "hq"}
	if err := bare.Normalize(); err != nil || bare.Aliases == nil || bare.Groups == nil {
		t.Errorf("bare user: %v, aliases %#v groups %#v (want empty lists)", err, bare.Aliases, bare.Groups)
	}

	tests := []struct {
		name   string
		edit   func(*User)
		fields []string
	}{
		{"every problem at once", func(u *User) {
			u.Username = "-john"
			u.DisplayName = "John\nDoe"
			u.PrimaryAddress = "John Doe <john@example.org>"
			u.Aliases = []string{"bad", "x@example.org", "X@example.org"}
			u.Site = "H Q"
			u.Groups = []string{"sales", "Sales", "bad group"}
			u.QuotaBytes = -1
			u.PasswordHash = "{PLAIN}secret"
		}, []string{"username", "display_name", "primary_address", "aliases[0]", "aliases[2]", "site", "groups[1]", "groups[2]", "quota_bytes", "password_hash"}},
		{"missing required", func(u *User) { u.Username, u.PrimaryAddress, u.Site = "", " ", "" },
			[]string{"username", "primary_address", "site"}},
		{"alias equals primary", func(u *User) { u.Aliases = []string{"JOHN@example.org"} }, []string{"aliases[0]"}},
		{"display name too long", func(u *User) { u.DisplayName = strings.Repeat("é", MaxNameLen+1) }, []string{"display_name"}},
		{"good imported hash", func(u *User) {
			u.PasswordHash = "{BLF-CRYPT}$2y$05$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAAI6"
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := validUser()
			tt.edit(&u)
			wantFields(t, u.Normalize(), tt.fields...)
		})
	}
}

func TestGroupNormalize(t *testing.T) {
	g := Group{Meta: Meta{ID: "g1"}, Name: "Sales", Address: "Sales@Example.org",
		Members: []Member{{Type: "User", ID: "u1"}, {Type: MemberGroup, ID: "g2"}}}
	if err := g.Normalize(); err != nil {
		t.Fatal(err)
	}
	if g.Name != "sales" || g.Address != "sales@example.org" || g.Members[0].Type != MemberUser {
		t.Errorf("normalized group = %+v", g)
	}
	noMembers := Group{Name: "empty"}
	if err := noMembers.Normalize(); err != nil || noMembers.Members == nil {
		t.Errorf("group without members: %v, %#v", err, noMembers.Members)
	}
	bad := Group{Meta: Meta{ID: "g1"}, Name: "sales team", Address: "nope",
		Members: []Member{{Type: "robot", ID: "r1"}, {Type: MemberUser, ID: ""}, {Type: MemberGroup, ID: "g1"},
			{Type: MemberUser, ID: "u1"}, {Type: MemberUser, ID: "u1"}}}
	wantFields(t, bad.Normalize(), "name", "address", "members[0].type", "members[1].id", "members[2].id", "members[4]")
}

func TestFindGroupCycle(t *testing.T) {
	stored := map[string][]Member{
		"b": {{Type: MemberGroup, ID: "c"}, {Type: MemberUser, ID: "u"}},
		"c": {{Type: MemberGroup, ID: "a"}},
		"d": {{Type: MemberGroup, ID: "d"}}, // a stored self-loop not through a must not hang
		"e": {{Type: MemberGroup, ID: "b"}},
	}
	membersOf := func(id string) []Member { return stored[id] }
	a := &Group{Meta: Meta{ID: "a"}, Members: []Member{{Type: MemberGroup, ID: "d"}, {Type: MemberGroup, ID: "e"}}}
	if got, want := FindGroupCycle(a, membersOf), []string{"a", "e", "b", "c", "a"}; !slices.Equal(got, want) {
		t.Errorf("cycle = %v, want %v", got, want)
	}
	a.Members = []Member{{Type: MemberGroup, ID: "d"}, {Type: MemberUser, ID: "a"}}
	if got := FindGroupCycle(a, membersOf); got != nil {
		t.Errorf("cycle = %v, want none", got)
	}
	if got := FindGroupCycle(&Group{Members: []Member{{Type: MemberGroup, ID: "b"}}}, membersOf); got != nil {
		t.Errorf("new group: cycle = %v, want none", got)
	}
}

func TestPOP3AccountDefaults(t *testing.T) {
	single := POP3Account{Name: "ISP-Sales", Host: "POP.ISP.example", Username: "sales", Site: "hq", Mode: ModeSingle, TargetUser: "u1"}
	if err := single.Normalize(); err != nil {
		t.Fatal(err)
	}
	if single.Name != "isp-sales" || single.Host != "pop.isp.example" || single.TLS != TLSImplicit || single.Port != 995 ||
		single.Auth != AuthUser || single.Keep.Policy != KeepDelete || single.PollIntervalSeconds != 300 ||
		single.EnvelopeHeaders == nil || single.LocalDomains == nil {
		t.Errorf("single defaults = %+v", single)
	}
	multi := POP3Account{Name: "isp", Host: "192.0.2.7", TLS: "STARTTLS", Username: "all", Site: "hq", Mode: ModeMulti,
		Postmaster: "u9", LocalDomains: []string{"Example.org"}, TLSFingerprint: strings.Repeat("AB:", 31) + "AB"}
	if err := multi.Normalize(); err != nil {
		t.Fatal(err)
	}
	if multi.Port != 110 || !slices.Equal(multi.EnvelopeHeaders, DefaultEnvelopeHeaders) ||
		!slices.Equal(multi.LocalDomains, []string{"example.org"}) || multi.TLSFingerprint != strings.Repeat("ab", 32) {
		t.Errorf("multi defaults = %+v", multi)
	}
	// The defaults are a copy: changing the account does not change the package variable.
	multi.EnvelopeHeaders[0] = "X-Changed"
	if DefaultEnvelopeHeaders[0] != "Delivered-To" {
		t.Fatal("DefaultEnvelopeHeaders was aliased")
	}
	insecure := POP3Account{Name: "lan", Host: "pop", TLS: TLSNone, AllowInsecure: true, Username: "x", Site: "hq", Mode: ModeSingle, TargetUser: "u1"}
	if err := insecure.Normalize(); err != nil || insecure.Port != 110 {
		t.Errorf("tls none with allow_insecure: %v, port %d", err, insecure.Port)
	}
	headers := POP3Account{Name: "h", Host: "pop.example.org", Username: "x", Site: "hq", Mode: ModeMulti, Postmaster: "u1",
		EnvelopeHeaders: []string{"delivered-to", "x-my-envelope", "RECEIVED"}, Keep: KeepPolicy{Policy: KeepDays, Days: 7}, PollIntervalSeconds: 30}
	if err := headers.Normalize(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"Delivered-To", "X-My-Envelope", "Received"}; !slices.Equal(headers.EnvelopeHeaders, want) {
		t.Errorf("envelope headers = %q, want %q", headers.EnvelopeHeaders, want)
	}
}

func TestPOP3AccountRules(t *testing.T) {
	base := func() POP3Account {
		return POP3Account{Name: "isp", Host: "pop.example.org", Username: "x", Site: "hq", Mode: ModeSingle, TargetUser: "u1"}
	}
	tests := []struct {
		name   string
		edit   func(*POP3Account)
		fields []string
	}{
		{"none without allow_insecure", func(p *POP3Account) { p.TLS = TLSNone }, []string{"tls"}},
		{"unknown tls", func(p *POP3Account) { p.TLS = "ssl" }, []string{"tls"}},
		{"port out of range", func(p *POP3Account) { p.Port = 70000 }, []string{"port"}},
		{"negative port", func(p *POP3Account) { p.Port = -1 }, []string{"port"}},
		{"bad fingerprint", func(p *POP3Account) { p.TLSFingerprint = "abcd" }, []string{"tls_fingerprint"}},
		{"bad auth", func(p *POP3Account) { p.Auth = "cram-md5" }, []string{"auth"}},
		{"missing host username site mode", func(p *POP3Account) { p.Host, p.Username, p.Site, p.Mode = "", "", "", "" },
			[]string{"host", "username", "site", "mode"}},
		{"single without target", func(p *POP3Account) { p.TargetUser = "" }, []string{"target_user"}},
		{"single with multi fields", func(p *POP3Account) {
			p.EnvelopeHeaders = []string{"Delivered-To"}
			p.LocalDomains = []string{"example.org"}
			p.Postmaster = "u2"
			p.FallbackToHeaders = true
		}, []string{"envelope_headers", "local_domains", "postmaster", "fallback_to_headers"}},
		{"multi without postmaster, with target", func(p *POP3Account) { p.Mode = ModeMulti }, []string{"target_user", "postmaster"}},
		{"bad envelope headers", func(p *POP3Account) {
			p.Mode, p.TargetUser, p.Postmaster = ModeMulti, "", "u2"
			p.EnvelopeHeaders = []string{"Delivered-To", "delivered-to", "X Bad", "X:Bad", ""}
			p.LocalDomains = []string{"localhost"}
		}, []string{"envelope_headers[1]", "envelope_headers[2]", "envelope_headers[3]", "envelope_headers[4]", "local_domains[0]"}},
		{"keep_days without days", func(p *POP3Account) { p.Keep.Policy = KeepDays }, []string{"keep.days"}},
		{"days with keep", func(p *POP3Account) { p.Keep = KeepPolicy{Policy: KeepForever, Days: 3} }, []string{"keep.days"}},
		{"bad keep policy", func(p *POP3Account) { p.Keep.Policy = "sometimes" }, []string{"keep.policy"}},
		{"poll too often", func(p *POP3Account) { p.PollIntervalSeconds = 29 }, []string{"poll_interval_seconds"}},
		{"poll too rarely", func(p *POP3Account) { p.PollIntervalSeconds = MaxPollInterval + 1 }, []string{"poll_interval_seconds"}},
		{"password_enc not sealed", func(p *POP3Account) { p.PasswordEnc = "hunter2" }, []string{"password_enc"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := base()
			tt.edit(&p)
			err := p.Normalize()
			wantFields(t, err, tt.fields...)
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
}

func TestSharedMailboxNormalize(t *testing.T) {
	m := SharedMailbox{Address: "Sales@Example.org", DisplayName: " Sales ", Manager: "m", Staff: []string{"z", "l"}}
	if err := m.Normalize(); err != nil {
		t.Fatal(err)
	}
	if m.Address != "sales@example.org" || m.DisplayName != "Sales" {
		t.Errorf("normalized = %+v", m)
	}
	bad := SharedMailbox{Address: "", DisplayName: "Sales\r\nBcc: x@evil.example", Manager: "", Staff: nil}
	wantFields(t, bad.Normalize(), "address", "display_name", "manager", "staff")
	dup := SharedMailbox{Address: "sales@example.org", Manager: "m", Staff: []string{"z", "m", "z", ""}}
	wantFields(t, dup.Normalize(), "staff[1]", "staff[2]", "staff[3]")
}

func TestTemplateNormalize(t *testing.T) {
	tp := Template{Name: "Staff", Site: "HQ", Groups: []string{"All"}, QuotaBytes: 5}
	if err := tp.Normalize(); err != nil || tp.Name != "staff" || tp.Site != "hq" || tp.Groups[0] != "all" {
		t.Errorf("%v %+v", err, tp)
	}
	noSite := Template{Name: "x"}
	if err := noSite.Normalize(); err != nil || noSite.Groups == nil {
		t.Errorf("%v %+v", err, noSite)
	}
	bad := Template{Name: "", Site: "H Q", Groups: []string{"a", "a"}, QuotaBytes: -5}
	wantFields(t, bad.Normalize(), "name", "site", "groups[1]", "quota_bytes")
}

func TestTokenNormalize(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	past := now.Add(-time.Hour)
	tests := []struct {
		tok    Token
		fields []string
	}{
		{Token{Name: "ops", Role: RoleAdmin}, nil},
		{Token{Name: "ops", Role: "Reader"}, nil},
		{Token{Name: "branch", Role: RoleSiteAdmin, Site: "branch"}, nil},
		{Token{Name: "agent", Role: RoleSiteAgent, Site: "Branch"}, nil},
		{Token{Name: "branch", Role: RoleSiteAdmin}, []string{"site"}},
		{Token{Name: "agent", Role: RoleSiteAgent, Site: "bad site"}, []string{"site"}},
		{Token{Name: "ops", Role: RoleAdmin, Site: "hq"}, []string{"site"}},
		{Token{Name: "ops", Role: RoleReader, Site: "hq"}, []string{"site"}},
		{Token{Name: "", Role: "root"}, []string{"name", "role"}},
		{Token{Meta: Meta{CreatedAt: now}, Name: "x", Role: RoleAdmin, ExpiresAt: &past}, []string{"expires_at"}},
	}
	for _, tt := range tests {
		tok := tt.tok
		err := tok.Normalize()
		if got := fields(t, err); !reflect.DeepEqual(got, tt.fields) {
			t.Errorf("%+v: invalid fields %q, want %q (%v)", tt.tok, got, tt.fields, err)
		}
	}
}
