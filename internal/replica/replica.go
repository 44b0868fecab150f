// Package replica reads a site's directory replica (kept in sitestate by the
// fetcher's AUM client from the users service's /v1/sync feed) as typed
// objects. The types are the read-side shapes of the sync feed's JSON (the
// users service's model, which other modules cannot import); only the fields
// a site uses are declared, unknown fields are ignored.
//
// Lookup keys, as the feed writes them: users by lower-cased user name,
// primary address and aliases; groups by name and address; shared mailboxes
// by address; sites by their mail domains; POP3 accounts by name.
package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/postern/postern/internal/sitestate"
)

// Kinds of replica entries: the kinds of the sync feed.
const (
	KindSite          = "site"
	KindUser          = "user"
	KindGroup         = "group"
	KindSharedMailbox = "shared_mailbox"
	KindPOP3Account   = "pop3_account"
)

// Kinds lists every kind the feed carries.
var Kinds = []string{KindSite, KindUser, KindGroup, KindSharedMailbox, KindPOP3Account}

// Site is a location with its own gateway.
type Site struct {
	ID           string   `json:"id"`
	Version      int64    `json:"version"`
	Name         string   `json:"name"`
	Domains      []string `json:"domains"`
	SMTPEndpoint string   `json:"smtp_endpoint"` // host:port other sites deliver to; empty: not reachable
}

// Permissions of a user towards the Internet.
type Permissions struct {
	InternetReceive bool `json:"internet_receive"`
	InternetSend    bool `json:"internet_send"`
}

// User is one person or device with one primary mailbox.
type User struct {
	ID             string      `json:"id"`
	Version        int64       `json:"version"`
	Username       string      `json:"username"`
	DisplayName    string      `json:"display_name"`
	PrimaryAddress string      `json:"primary_address"`
	Aliases        []string    `json:"aliases"`
	Site           string      `json:"site"`
	Groups         []string    `json:"groups"`
	Enabled        bool        `json:"enabled"`
	Permissions    Permissions `json:"permissions"`
	QuotaBytes     int64       `json:"quota_bytes"`
	// PasswordHash is present only on the replica of the user's home site
	// ({ARGON2ID} or {BLF-CRYPT}, see package passwd); empty means the user
	// cannot log in.
	PasswordHash string `json:"password_hash,omitempty"`
}

// Addresses returns the user's primary address and aliases, lower-cased.
func (u *User) Addresses() []string {
	out := []string{strings.ToLower(u.PrimaryAddress)}
	for _, a := range u.Aliases {
		out = append(out, strings.ToLower(a))
	}
	return out
}

// HasAddress reports whether addr (any case) is one of the user's addresses.
func (u *User) HasAddress(addr string) bool {
	return slices.Contains(u.Addresses(), strings.ToLower(addr))
}

// Name is the name the user is known by in mail headers: the display name,
// else the user name.
func (u *User) Name() string {
	if n := strings.TrimSpace(u.DisplayName); n != "" {
		return n
	}
	return u.Username
}

// Member types of a group.
const (
	MemberUser  = "user"
	MemberGroup = "group"
)

// Member of a group: a user or another group.
type Member struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// Group is a mail group (distribution list).
type Group struct {
	ID      string   `json:"id"`
	Version int64    `json:"version"`
	Name    string   `json:"name"`
	Address string   `json:"address"`
	Members []Member `json:"members"`
}

// SharedMailbox is a unified external address worked by staff (seed 004).
type SharedMailbox struct {
	ID                    string   `json:"id"`
	Version               int64    `json:"version"`
	Address               string   `json:"address"`
	DisplayName           string   `json:"display_name"`
	Manager               string   `json:"manager"` // user id
	Staff                 []string `json:"staff"`   // user ids
	ForwardToStaff        bool     `json:"forward_to_staff"`
	RewriteSender         bool     `json:"rewrite_sender"`
	CopyOutboundToManager bool     `json:"copy_outbound_to_manager"`
}

// HasStaff reports whether userID works the mailbox as staff.
func (m *SharedMailbox) HasStaff(userID string) bool { return slices.Contains(m.Staff, userID) }

// POP3 account settings (the values of the users service's schema).
const (
	TLSImplicit = "tls"      // TLS from the first byte (port 995)
	TLSStartTLS = "starttls" // STLS after the greeting
	TLSNone     = "none"     // plaintext; only with AllowInsecure
	AuthUser    = "user"     // USER/PASS (or SASL PLAIN when offered)
	AuthAPOP    = "apop"     // APOP
	ModeSingle  = "single"   // every message to TargetUser
	ModeMulti   = "multi"    // recipients from envelope headers
	KeepDelete  = "delete_after_delivery"
	KeepDays    = "keep_days"
	KeepForever = "keep"
)

// DefaultEnvelopeHeaders are read, in order, to find a multi-drop message's
// recipients when an account names none.
var DefaultEnvelopeHeaders = []string{"Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Received"}

// KeepPolicy says when a downloaded message is deleted from the ISP server.
type KeepPolicy struct {
	Policy string `json:"policy"`         // KeepDelete, KeepDays or KeepForever
	Days   int    `json:"days,omitempty"` // for KeepDays
}

// POP3Account is an ISP mailbox this site downloads. Password is the clear
// POP3 password: the feed carries it only to the site that downloads the
// account.
type POP3Account struct {
	ID                  string     `json:"id"`
	Version             int64      `json:"version"`
	Name                string     `json:"name"`
	Host                string     `json:"host"`
	Port                int        `json:"port"`
	TLS                 string     `json:"tls"`
	AllowInsecure       bool       `json:"allow_insecure"`
	TLSSkipVerify       bool       `json:"tls_skip_verify"`
	TLSFingerprint      string     `json:"tls_fingerprint"` // hex SHA-256 of the server certificate
	Auth                string     `json:"auth"`
	Username            string     `json:"username"`
	Password            string     `json:"password,omitempty"`
	Site                string     `json:"site"`
	Mode                string     `json:"mode"`
	TargetUser          string     `json:"target_user"` // user id (single)
	EnvelopeHeaders     []string   `json:"envelope_headers"`
	LocalDomains        []string   `json:"local_domains"`
	Postmaster          string     `json:"postmaster"` // user id (multi)
	FallbackToHeaders   bool       `json:"fallback_to_headers"`
	Keep                KeepPolicy `json:"keep"`
	PollIntervalSeconds int        `json:"poll_interval_seconds"`
	Enabled             bool       `json:"enabled"`
}

// Decode unmarshals an entry's data into v; the entry's ID is authoritative
// and is set by the typed readers below.
func Decode[T any](e sitestate.Entry, v *T) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("directory %s %s: no data", e.Kind, e.ID)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("directory %s %s: %w", e.Kind, e.ID, err)
	}
	return nil
}

// NotFound reports whether err says an entry does not exist.
func NotFound(err error) bool { return errors.Is(err, sitestate.ErrNotFound) }

// Reader reads typed objects from the replica. A missing object is (nil,
// nil); any error is a failure of the replica's backend or a corrupt entry.
type Reader struct {
	D sitestate.DirectoryReader
}

func get[T any](ctx context.Context, d sitestate.DirectoryReader, kind, id string, setID func(*T, string)) (*T, error) {
	e, err := d.Get(ctx, kind, id)
	if NotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("directory: get %s %s: %w", kind, id, err)
	}
	return decodeEntry(e, setID)
}

func lookup[T any](ctx context.Context, d sitestate.DirectoryReader, kind, key string, setID func(*T, string)) (*T, error) {
	e, err := d.Lookup(ctx, kind, strings.ToLower(strings.TrimSpace(key)))
	if NotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("directory: lookup %s %q: %w", kind, key, err)
	}
	return decodeEntry(e, setID)
}

func list[T any](ctx context.Context, d sitestate.DirectoryReader, kind string, setID func(*T, string)) ([]*T, error) {
	es, err := d.List(ctx, kind)
	if err != nil {
		return nil, fmt.Errorf("directory: list %s: %w", kind, err)
	}
	out := make([]*T, 0, len(es))
	for _, e := range es {
		v, err := decodeEntry(e, setID)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func decodeEntry[T any](e sitestate.Entry, setID func(*T, string)) (*T, error) {
	v := new(T)
	if err := Decode(e, v); err != nil {
		return nil, err
	}
	setID(v, e.ID)
	return v, nil
}

func setUserID(u *User, id string)            { u.ID = id }
func setSiteID(s *Site, id string)            { s.ID = id }
func setGroupID(g *Group, id string)          { g.ID = id }
func setSharedID(m *SharedMailbox, id string) { m.ID = id }
func setPOP3ID(a *POP3Account, id string)     { a.ID = id }

// User returns the user with id.
func (r Reader) User(ctx context.Context, id string) (*User, error) {
	return get(ctx, r.D, KindUser, id, setUserID)
}

// UserByKey returns the user owning key: an address or a user name (any case).
func (r Reader) UserByKey(ctx context.Context, key string) (*User, error) {
	return lookup(ctx, r.D, KindUser, key, setUserID)
}

// Users returns every user, ordered by id.
func (r Reader) Users(ctx context.Context) ([]*User, error) {
	return list(ctx, r.D, KindUser, setUserID)
}

// Site returns the site named name.
func (r Reader) Site(ctx context.Context, name string) (*Site, error) {
	return get(ctx, r.D, KindSite, name, setSiteID)
}

// SiteOfDomain returns the site receiving mail for domain (any case), nil
// when the domain is not the organisation's.
func (r Reader) SiteOfDomain(ctx context.Context, domain string) (*Site, error) {
	return lookup(ctx, r.D, KindSite, domain, setSiteID)
}

// Sites returns every site, ordered by name.
func (r Reader) Sites(ctx context.Context) ([]*Site, error) {
	return list(ctx, r.D, KindSite, setSiteID)
}

// Group returns the group with id.
func (r Reader) Group(ctx context.Context, id string) (*Group, error) {
	return get(ctx, r.D, KindGroup, id, setGroupID)
}

// GroupByKey returns the group with that name or address.
func (r Reader) GroupByKey(ctx context.Context, key string) (*Group, error) {
	return lookup(ctx, r.D, KindGroup, key, setGroupID)
}

// SharedMailbox returns the shared mailbox with id.
func (r Reader) SharedMailbox(ctx context.Context, id string) (*SharedMailbox, error) {
	return get(ctx, r.D, KindSharedMailbox, id, setSharedID)
}

// SharedMailboxByAddress returns the shared mailbox with that address.
func (r Reader) SharedMailboxByAddress(ctx context.Context, addr string) (*SharedMailbox, error) {
	return lookup(ctx, r.D, KindSharedMailbox, addr, setSharedID)
}

// SharedMailboxes returns every shared mailbox, ordered by id.
func (r Reader) SharedMailboxes(ctx context.Context) ([]*SharedMailbox, error) {
	return list(ctx, r.D, KindSharedMailbox, setSharedID)
}

// POP3Account returns the POP3 account with id.
func (r Reader) POP3Account(ctx context.Context, id string) (*POP3Account, error) {
	return get(ctx, r.D, KindPOP3Account, id, setPOP3ID)
}

// POP3Accounts returns every POP3 account in the replica (the feed carries
// only this site's), ordered by id.
func (r Reader) POP3Accounts(ctx context.Context) ([]*POP3Account, error) {
	return list(ctx, r.D, KindPOP3Account, setPOP3ID)
}

// InOrganisation reports whether domain is one of the organisation's mail
// domains (any site's).
func (r Reader) InOrganisation(ctx context.Context, domain string) (bool, error) {
	if domain == "" {
		return false, nil
	}
	s, err := r.SiteOfDomain(ctx, domain)
	return s != nil, err
}
