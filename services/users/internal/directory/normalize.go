package directory

import (
	"encoding/hex"
	"fmt"
	"net/textproto"
	"strings"
)

// The Normalize methods bring an object to the form the directory stores
// (trimmed, lower-cased names and addresses, A-label domains, defaults
// filled in, nil lists made empty) and check every rule that needs no
// other object. They return a *ValidationError listing every problem, or
// nil. Rules that need the rest of the directory (uniqueness, that a
// referenced site, user or group exists, group cycles through stored
// groups, a primary address in a site's domains) belong to the store and
// the API; FindGroupCycle is the pure part of the cycle rule.
//
// Meta is neither changed nor checked.

// Text limits.
const (
	MaxNameLen        = 256  // display names, token names
	MaxDescriptionLen = 1024 // free-text descriptions
)

// Normalize normalizes and validates a site.
func (s *Site) Normalize() error {
	var v ValidationError
	s.Name = strings.ToLower(strings.TrimSpace(s.Name))
	if err := ValidSlug(s.Name); err != nil {
		v.addErr("name", err)
	}
	checkText(&v, "description", s.Description, MaxDescriptionLen, true)
	s.Domains = normalizeDomains(&v, "domains", s.Domains)
	if strings.TrimSpace(s.SMTPEndpoint) != "" {
		ep, err := NormalizeHostPort(s.SMTPEndpoint)
		if err != nil {
			v.addErr("smtp_endpoint", err)
		} else {
			s.SMTPEndpoint = ep
		}
	} else {
		s.SMTPEndpoint = ""
	}
	return v.Err()
}

// Normalize normalizes and validates a user. The username and every
// address are lower-cased; the display name is trimmed and may not contain
// control characters, line breaks included (it ends up in From: headers
// when a shared mailbox rewrites the sender). A non-empty PasswordHash
// must be one CheckImportedHash accepts.
func (u *User) Normalize() error {
	var v ValidationError
	u.Username = strings.ToLower(strings.TrimSpace(u.Username))
	if err := ValidUsername(u.Username); err != nil {
		v.addErr("username", err)
	}
	u.DisplayName = strings.TrimSpace(u.DisplayName)
	checkText(&v, "display_name", u.DisplayName, MaxNameLen, false)
	if strings.TrimSpace(u.PrimaryAddress) == "" {
		v.Add("primary_address", "required")
	} else if a, err := NormalizeAddress(u.PrimaryAddress); err != nil {
		v.addErr("primary_address", err)
	} else {
		u.PrimaryAddress = a
	}
	u.Aliases = normalizeAddresses(&v, "aliases", u.Aliases, map[string]string{u.PrimaryAddress: "primary_address"})
	u.Site = strings.ToLower(strings.TrimSpace(u.Site))
	if u.Site == "" {
		v.Add("site", "required")
	} else if err := ValidSlug(u.Site); err != nil {
		v.addErr("site", err)
	}
	u.Groups = normalizeSlugs(&v, "groups", u.Groups)
	if u.QuotaBytes < 0 {
		v.Add("quota_bytes", "may not be negative (0 means no quota)")
	}
	if u.PasswordHash != "" {
		if err := CheckImportedHash(u.PasswordHash); err != nil {
			v.addErr("password_hash", err)
		}
	}
	return v.Err()
}

// Normalize normalizes and validates a group. Members must be users or
// groups, given once each; a group may not be its own member (checked
// when the group has an ID). Longer cycles need the stored groups: see
// FindGroupCycle.
func (g *Group) Normalize() error {
	var v ValidationError
	g.Name = strings.ToLower(strings.TrimSpace(g.Name))
	if err := ValidSlug(g.Name); err != nil {
		v.addErr("name", err)
	}
	if strings.TrimSpace(g.Address) != "" {
		if a, err := NormalizeAddress(g.Address); err != nil {
			v.addErr("address", err)
		} else {
			g.Address = a
		}
	} else {
		g.Address = ""
	}
	checkText(&v, "description", g.Description, MaxDescriptionLen, true)
	if g.Members == nil {
		g.Members = []Member{}
	}
	seen := make(map[Member]int, len(g.Members))
	for i := range g.Members {
		m := &g.Members[i]
		f := fmt.Sprintf("members[%d]", i)
		m.Type = strings.ToLower(strings.TrimSpace(m.Type))
		m.ID = strings.TrimSpace(m.ID)
		if m.Type != MemberUser && m.Type != MemberGroup {
			v.Addf(f+".type", "must be %q or %q", MemberUser, MemberGroup)
		}
		checkID(&v, f+".id", m.ID)
		if m.Type == MemberGroup && g.ID != "" && m.ID == g.ID {
			v.Add(f+".id", "a group cannot be a member of itself")
		}
		if j, dup := seen[*m]; dup {
			v.Addf(f, "duplicate of members[%d]", j)
		} else {
			seen[*m] = i
		}
	}
	return v.Err()
}

// FindGroupCycle reports whether making g's members as given would create
// a cycle of group memberships. membersOf returns the stored members of
// another group (nil when it has none or does not exist); g's own stored
// members are ignored in favour of g.Members. The result is the cycle as
// a list of group IDs starting and ending with g.ID, or nil.
func FindGroupCycle(g *Group, membersOf func(groupID string) []Member) []string {
	if g.ID == "" {
		return nil // a group being created has no ID yet: nothing can contain it
	}
	visited := map[string]bool{}
	var path []string
	var walk func(members []Member) bool
	walk = func(members []Member) bool {
		for _, m := range members {
			if m.Type != MemberGroup {
				continue
			}
			if m.ID == g.ID {
				path = append(path, m.ID)
				return true
			}
			if visited[m.ID] {
				continue
			}
			visited[m.ID] = true
			path = append(path, m.ID)
			if walk(membersOf(m.ID)) {
				return true
			}
			path = path[:len(path)-1]
		}
		return false
	}
	path = []string{g.ID}
	if walk(g.Members) {
		return path
	}
	return nil
}

// knownEnvelopeHeaders are the spellings used for envelope recipient
// headers that Postern knows; others are accepted when they are valid
// RFC 5322 field names.
var knownEnvelopeHeaders = []string{
	"Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Received",
	"X-Rcpt-To", "X-Original-Recipient", "X-Apparently-To", "X-Resolved-To",
}

// POP3 account limits and defaults.
const (
	DefaultPOP3TLSPort      = 995
	DefaultPOP3Port         = 110
	DefaultPollInterval     = 300   // seconds
	MinPollInterval         = 30    // seconds
	MaxPollInterval         = 86400 // seconds: a mailbox polled less than daily is a mistake
	MaxKeepDays             = 3650
	maxHeaderFieldNameLen   = 76
	maxEnvelopeHeaders      = 16
	maxPOP3UsernameLen      = 256
	sha256FingerprintHexLen = 64
)

// Normalize normalizes and validates a POP3 account, filling in defaults:
// tls "tls", port 995 for tls and 110 otherwise, auth "user", keep policy
// "delete_after_delivery", poll interval 300 s, and in multi mode the
// envelope headers DefaultEnvelopeHeaders. Rules: "none" only with
// allow_insecure; single needs target_user and takes none of the multi
// fields; multi needs postmaster and takes no target_user; envelope
// headers are RFC 5322 field names (known ones get their usual spelling),
// distinct; keep_days needs days >= 1 (others take none); the poll
// interval is 30 s to 1 day; tls_fingerprint is a SHA-256 in hex (colons
// allowed, stored lower-case without them). PasswordEnc, when set, must
// look like SecretBox output.
func (p *POP3Account) Normalize() error {
	var v ValidationError
	p.Name = strings.ToLower(strings.TrimSpace(p.Name))
	if err := ValidSlug(p.Name); err != nil {
		v.addErr("name", err)
	}
	if h, err := NormalizeHost(p.Host); err != nil {
		v.addErr("host", err)
	} else {
		p.Host = h
	}

	p.TLS = strings.ToLower(strings.TrimSpace(p.TLS))
	if p.TLS == "" {
		p.TLS = TLSImplicit
	}
	switch p.TLS {
	case TLSImplicit, TLSStartTLS:
	case TLSNone:
		if !p.AllowInsecure {
			v.Add("tls", `"none" sends the password in clear text and needs allow_insecure: true`)
		}
	default:
		v.Addf("tls", "must be %q, %q or %q", TLSImplicit, TLSStartTLS, TLSNone)
	}
	if p.Port == 0 {
		if p.TLS == TLSImplicit {
			p.Port = DefaultPOP3TLSPort
		} else {
			p.Port = DefaultPOP3Port
		}
	}
	if p.Port < 1 || p.Port > 65535 {
		v.Add("port", "must be from 1 to 65535")
	}
	if p.TLSFingerprint != "" {
		fp := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(p.TLSFingerprint), ":", ""))
		if _, err := hex.DecodeString(fp); err != nil || len(fp) != sha256FingerprintHexLen {
			v.Add("tls_fingerprint", "must be the SHA-256 of the certificate in hex (64 digits, colons allowed)")
		} else {
			p.TLSFingerprint = fp
		}
	}

	p.Auth = strings.ToLower(strings.TrimSpace(p.Auth))
	if p.Auth == "" {
		p.Auth = AuthUser
	}
	if p.Auth != AuthUser && p.Auth != AuthAPOP {
		v.Addf("auth", "must be %q or %q", AuthUser, AuthAPOP)
	}
	if p.Username == "" {
		v.Add("username", "required")
	} else {
		checkText(&v, "username", p.Username, maxPOP3UsernameLen, false)
	}
	p.Site = strings.ToLower(strings.TrimSpace(p.Site))
	if p.Site == "" {
		v.Add("site", "required")
	} else if err := ValidSlug(p.Site); err != nil {
		v.addErr("site", err)
	}

	p.Mode = strings.ToLower(strings.TrimSpace(p.Mode))
	p.TargetUser = strings.TrimSpace(p.TargetUser)
	p.Postmaster = strings.TrimSpace(p.Postmaster)
	switch p.Mode {
	case ModeSingle:
		checkID(&v, "target_user", p.TargetUser)
		if len(p.EnvelopeHeaders) > 0 {
			v.Add("envelope_headers", "only for mode multi")
		}
		if len(p.LocalDomains) > 0 {
			v.Add("local_domains", "only for mode multi")
		}
		if p.Postmaster != "" {
			v.Add("postmaster", "only for mode multi")
		}
		if p.FallbackToHeaders {
			v.Add("fallback_to_headers", "only for mode multi")
		}
		p.EnvelopeHeaders = []string{}
		p.LocalDomains = []string{}
	case ModeMulti:
		if p.TargetUser != "" {
			v.Add("target_user", "only for mode single")
		}
		checkID(&v, "postmaster", p.Postmaster)
		if len(p.EnvelopeHeaders) == 0 {
			p.EnvelopeHeaders = append([]string(nil), DefaultEnvelopeHeaders...)
		}
		p.EnvelopeHeaders = normalizeHeaderNames(&v, "envelope_headers", p.EnvelopeHeaders)
		p.LocalDomains = normalizeDomains(&v, "local_domains", p.LocalDomains)
	default:
		v.Addf("mode", "must be %q or %q", ModeSingle, ModeMulti)
		if p.EnvelopeHeaders == nil {
			p.EnvelopeHeaders = []string{}
		}
		if p.LocalDomains == nil {
			p.LocalDomains = []string{}
		}
	}

	p.Keep.Policy = strings.ToLower(strings.TrimSpace(p.Keep.Policy))
	if p.Keep.Policy == "" {
		p.Keep.Policy = KeepDelete
	}
	switch p.Keep.Policy {
	case KeepDays:
		if p.Keep.Days < 1 || p.Keep.Days > MaxKeepDays {
			v.Addf("keep.days", "must be from 1 to %d for %q", MaxKeepDays, KeepDays)
		}
	case KeepDelete, KeepForever:
		if p.Keep.Days != 0 {
			v.Addf("keep.days", "only for %q", KeepDays)
		}
	default:
		v.Addf("keep.policy", "must be %q, %q or %q", KeepDelete, KeepDays, KeepForever)
	}

	if p.PollIntervalSeconds == 0 {
		p.PollIntervalSeconds = DefaultPollInterval
	}
	if p.PollIntervalSeconds < MinPollInterval || p.PollIntervalSeconds > MaxPollInterval {
		v.Addf("poll_interval_seconds", "must be from %d to %d", MinPollInterval, MaxPollInterval)
	}
	if p.PasswordEnc != "" && !looksSealed(p.PasswordEnc) {
		v.Add("password_enc", "not a sealed secret")
	}
	return v.Err()
}

// normalizeHeaderNames checks envelope header names: RFC 5322 field names
// (printable ASCII except ':'), known ones in their usual spelling, others
// canonicalised like net/textproto does, no duplicates (ignoring case).
func normalizeHeaderNames(v *ValidationError, field string, names []string) []string {
	if len(names) > maxEnvelopeHeaders {
		v.Addf(field, "at most %d headers", maxEnvelopeHeaders)
	}
	out := make([]string, 0, len(names))
	seen := map[string]int{}
	for i, n := range names {
		f := fmt.Sprintf("%s[%d]", field, i)
		n = strings.TrimSpace(n)
		if err := checkFieldName(n); err != nil {
			v.addErr(f, err)
			out = append(out, n)
			continue
		}
		canon := textproto.CanonicalMIMEHeaderKey(n)
		for _, k := range knownEnvelopeHeaders {
			if strings.EqualFold(k, n) {
				canon = k
				break
			}
		}
		key := strings.ToLower(canon)
		if j, dup := seen[key]; dup {
			v.Addf(f, "duplicate of %s[%d]", field, j)
		} else {
			seen[key] = i
		}
		out = append(out, canon)
	}
	return out
}

// checkFieldName checks an RFC 5322 field name: 1*ftext, ftext = %d33-57 /
// %d59-126.
func checkFieldName(n string) error {
	if n == "" {
		return fmt.Errorf("empty header name")
	}
	if len(n) > maxHeaderFieldNameLen {
		return fmt.Errorf("header name longer than %d characters", maxHeaderFieldNameLen)
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c < 33 || c > 126 || c == ':' {
			return fmt.Errorf("not a header field name: only printable ASCII without ':' or spaces")
		}
	}
	return nil
}

// Normalize normalizes and validates a shared mailbox. The address and a
// manager are required; staff is at least one user, each once, and the
// manager is not one of them: the manager mailbox holds the unified
// address and keeps copies, staff answer customers, and replies are routed
// to exactly one staff member (seed 004), which only works when the two
// roles are distinct. The display name goes into From: headers, so it may
// not contain control characters or line breaks.
func (m *SharedMailbox) Normalize() error {
	var v ValidationError
	if strings.TrimSpace(m.Address) == "" {
		v.Add("address", "required")
	} else if a, err := NormalizeAddress(m.Address); err != nil {
		v.addErr("address", err)
	} else {
		m.Address = a
	}
	m.DisplayName = strings.TrimSpace(m.DisplayName)
	checkText(&v, "display_name", m.DisplayName, MaxNameLen, false)
	m.Manager = strings.TrimSpace(m.Manager)
	checkID(&v, "manager", m.Manager)
	if m.Staff == nil {
		m.Staff = []string{}
	}
	if len(m.Staff) == 0 {
		v.Add("staff", "at least one staff user is required")
	}
	seen := map[string]int{}
	for i := range m.Staff {
		f := fmt.Sprintf("staff[%d]", i)
		m.Staff[i] = strings.TrimSpace(m.Staff[i])
		id := m.Staff[i]
		checkID(&v, f, id)
		if id != "" && id == m.Manager {
			v.Add(f, "the manager cannot also be staff")
		}
		if j, dup := seen[id]; dup && id != "" {
			v.Addf(f, "duplicate of staff[%d]", j)
		} else {
			seen[id] = i
		}
	}
	return v.Err()
}

// Normalize normalizes and validates a user template. Every field is a
// default; the site may be empty (no default site).
func (t *Template) Normalize() error {
	var v ValidationError
	t.Name = strings.ToLower(strings.TrimSpace(t.Name))
	if err := ValidSlug(t.Name); err != nil {
		v.addErr("name", err)
	}
	t.Site = strings.ToLower(strings.TrimSpace(t.Site))
	if t.Site != "" {
		if err := ValidSlug(t.Site); err != nil {
			v.addErr("site", err)
		}
	}
	t.Groups = normalizeSlugs(&v, "groups", t.Groups)
	if t.QuotaBytes < 0 {
		v.Add("quota_bytes", "may not be negative (0 means no quota)")
	}
	return v.Err()
}

// Normalize normalizes and validates an API token: a name, a known role,
// a site for site_admin and site_agent and none for admin and reader, an
// expiry (if any) after its creation.
func (t *Token) Normalize() error {
	var v ValidationError
	t.Name = strings.TrimSpace(t.Name)
	if t.Name == "" {
		v.Add("name", "required")
	} else {
		checkText(&v, "name", t.Name, MaxNameLen, false)
	}
	t.Role = strings.ToLower(strings.TrimSpace(t.Role))
	t.Site = strings.ToLower(strings.TrimSpace(t.Site))
	switch t.Role {
	case RoleSiteAdmin, RoleSiteAgent:
		if t.Site == "" {
			v.Addf("site", "required for role %s", t.Role)
		} else if err := ValidSlug(t.Site); err != nil {
			v.addErr("site", err)
		}
	case RoleAdmin, RoleReader:
		if t.Site != "" {
			v.Addf("site", "not allowed for role %s (it is not limited to a site)", t.Role)
		}
	default:
		v.Addf("role", "must be %q, %q, %q or %q", RoleAdmin, RoleSiteAdmin, RoleSiteAgent, RoleReader)
	}
	if t.ExpiresAt != nil {
		if t.ExpiresAt.IsZero() {
			v.Add("expires_at", "not a valid time")
		} else if !t.CreatedAt.IsZero() && !t.ExpiresAt.After(t.CreatedAt) {
			v.Add("expires_at", "must be after the token's creation")
		}
	}
	return v.Err()
}

// normalizeDomains normalizes a list of domains; duplicates are errors.
func normalizeDomains(v *ValidationError, field string, in []string) []string {
	out := make([]string, 0, len(in))
	seen := map[string]int{}
	for i, d := range in {
		f := fmt.Sprintf("%s[%d]", field, i)
		n, err := NormalizeDomain(d)
		if err != nil {
			v.addErr(f, err)
			out = append(out, d)
			continue
		}
		if j, dup := seen[n]; dup {
			v.Addf(f, "duplicate of %s[%d]", field, j)
		} else {
			seen[n] = i
		}
		out = append(out, n)
	}
	return out
}

// normalizeAddresses normalizes a list of addresses; duplicates within the
// list and addresses equal to one in taken (address -> field) are errors.
func normalizeAddresses(v *ValidationError, field string, in []string, taken map[string]string) []string {
	out := make([]string, 0, len(in))
	seen := map[string]int{}
	for i, a := range in {
		f := fmt.Sprintf("%s[%d]", field, i)
		n, err := NormalizeAddress(a)
		if err != nil {
			v.addErr(f, err)
			out = append(out, a)
			continue
		}
		if other, ok := taken[n]; ok && n != "" {
			v.Addf(f, "same as %s", other)
		} else if j, dup := seen[n]; dup {
			v.Addf(f, "duplicate of %s[%d]", field, j)
		} else {
			seen[n] = i
		}
		out = append(out, n)
	}
	return out
}

// normalizeSlugs lower-cases and checks a list of names; duplicates are
// errors.
func normalizeSlugs(v *ValidationError, field string, in []string) []string {
	out := make([]string, 0, len(in))
	seen := map[string]int{}
	for i, s := range in {
		f := fmt.Sprintf("%s[%d]", field, i)
		s = strings.ToLower(strings.TrimSpace(s))
		if err := ValidSlug(s); err != nil {
			v.addErr(f, err)
		} else if j, dup := seen[s]; dup {
			v.Addf(f, "duplicate of %s[%d]", field, j)
		} else {
			seen[s] = i
		}
		out = append(out, s)
	}
	return out
}
