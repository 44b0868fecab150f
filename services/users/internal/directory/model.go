// Package directory is the users service's domain: the objects of the
// directory (sites, users, groups, POP3 accounts, shared mailboxes, user
// templates, API tokens, audit entries), their validation, password hashing
// and the encryption of POP3 credentials at rest.
//
// JSON names here are the names of the REST API (api/openapi/users.yaml), of
// the change log and of the sync feed the sites read.
package directory

import (
	"encoding/json"
	"time"
)

// Kinds of directory objects, as they appear in the change log
// (events.DirectoryChange.Kind) and the sync feed.
const (
	KindSite          = "site"
	KindUser          = "user"
	KindGroup         = "group"
	KindPOP3Account   = "pop3_account"
	KindSharedMailbox = "shared_mailbox"
	KindTemplate      = "template"
	KindToken         = "token"
)

// Meta is what every stored object carries.
type Meta struct {
	ID        string    `json:"id"`         // server-assigned (UUIDv7), immutable; sites use their name
	Version   int64     `json:"version"`    // incremented on every change; the ETag is derived from it
	CreatedAt time.Time `json:"created_at"` // UTC
	UpdatedAt time.Time `json:"updated_at"` // UTC
}

// Site is a location with its own gateway.
type Site struct {
	Meta
	Name         string   `json:"name"`          // slug, unique, immutable: lower-case letters, digits, dashes; also the ID
	Description  string   `json:"description"`   // free text
	Domains      []string `json:"domains"`       // mail domains the organisation receives here (lower-case, IDNA A-labels stored)
	SMTPEndpoint string   `json:"smtp_endpoint"` // host:port other sites deliver to (empty: not reachable from other sites)
}

// Permissions of a user towards the Internet.
type Permissions struct {
	InternetReceive bool `json:"internet_receive"` // may receive mail from outside the organisation
	InternetSend    bool `json:"internet_send"`    // may send mail outside the organisation
}

// User is one person or device with one primary mailbox.
type User struct {
	Meta
	Username       string      `json:"username"`        // unique, lower-case: letters, digits, . _ -; 1..64
	DisplayName    string      `json:"display_name"`    // the "description" of seed 002
	PrimaryAddress string      `json:"primary_address"` // unique across all addresses
	Aliases        []string    `json:"aliases"`         // further addresses, unique across all addresses
	Site           string      `json:"site"`            // home site name
	Groups         []string    `json:"groups"`          // names of the groups the user is a direct member of
	Enabled        bool        `json:"enabled"`
	Permissions    Permissions `json:"permissions"`
	QuotaBytes     int64       `json:"quota_bytes"` // 0 = no quota
	// PasswordHash is the stored hash in Dovecot's {SCHEME}... form. Never
	// in API responses; in the sync feed only for the user's own site.
	PasswordHash string `json:"password_hash,omitempty"`
}

// MemberType says what a group member is.
const (
	MemberUser  = "user"
	MemberGroup = "group"
)

// Member of a group: a user or another group (no cycles).
type Member struct {
	Type string `json:"type"` // MemberUser or MemberGroup
	ID   string `json:"id"`   // the user's or group's ID
}

// Group is a mail group (distribution list).
type Group struct {
	Meta
	Name        string   `json:"name"`        // unique slug
	Address     string   `json:"address"`     // the list's address (optional; unique across all addresses)
	Description string   `json:"description"` // free text
	Members     []Member `json:"members"`
}

// TLS modes and auth methods of a POP3 account.
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

// DefaultEnvelopeHeaders are read, in order, to find a multi-drop
// message's recipients.
var DefaultEnvelopeHeaders = []string{"Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Received"}

// KeepPolicy says when a downloaded message is deleted from the ISP server.
type KeepPolicy struct {
	Policy string `json:"policy"`         // KeepDelete, KeepDays or KeepForever
	Days   int    `json:"days,omitempty"` // for KeepDays, >= 1
}

// POP3Account is an ISP mailbox downloaded by one site.
type POP3Account struct {
	Meta
	Name                string     `json:"name"` // unique label, e.g. "isp-sales"
	Host                string     `json:"host"`
	Port                int        `json:"port"`                  // default 995 for tls, 110 otherwise
	TLS                 string     `json:"tls"`                   // TLSImplicit, TLSStartTLS or TLSNone
	AllowInsecure       bool       `json:"allow_insecure"`        // required for TLSNone
	TLSSkipVerify       bool       `json:"tls_skip_verify"`       // accept any certificate (self-signed ISP servers)
	TLSFingerprint      string     `json:"tls_fingerprint"`       // pinned SHA-256 of the server certificate, hex (optional)
	Auth                string     `json:"auth"`                  // AuthUser or AuthAPOP
	Username            string     `json:"username"`              // login at the ISP
	Site                string     `json:"site"`                  // the site that downloads it
	Mode                string     `json:"mode"`                  // ModeSingle or ModeMulti
	TargetUser          string     `json:"target_user"`           // user ID (single)
	EnvelopeHeaders     []string   `json:"envelope_headers"`      // multi: headers to read, in order
	LocalDomains        []string   `json:"local_domains"`         // multi: recipients kept only in these domains (empty: every site's domains)
	Postmaster          string     `json:"postmaster"`            // multi: user ID receiving what cannot be delivered
	FallbackToHeaders   bool       `json:"fallback_to_headers"`   // multi: use To/Cc/Bcc when no envelope header names a recipient
	Keep                KeepPolicy `json:"keep"`                  // deletion policy
	PollIntervalSeconds int        `json:"poll_interval_seconds"` // >= 30
	Enabled             bool       `json:"enabled"`
	// PasswordEnc is the POP3 password encrypted at rest (see SecretBox).
	// Never in API responses; decrypted only into the sync feed of the
	// site that downloads the account.
	PasswordEnc string `json:"password_enc,omitempty"`
}

// SharedMailbox is a unified external address worked by staff (seed 004).
type SharedMailbox struct {
	Meta
	Address               string   `json:"address"`      // the unified external address, unique across all addresses
	DisplayName           string   `json:"display_name"` // e.g. "Sales"
	Manager               string   `json:"manager"`      // user ID of the manager mailbox
	Staff                 []string `json:"staff"`        // user IDs
	ForwardToStaff        bool     `json:"forward_to_staff"`
	RewriteSender         bool     `json:"rewrite_sender"`
	CopyOutboundToManager bool     `json:"copy_outbound_to_manager"`
}

// Template gives new users defaults (seed 002): CSV imports and creations
// may name one.
type Template struct {
	Meta
	Name        string      `json:"name"` // unique slug
	Site        string      `json:"site"`
	Groups      []string    `json:"groups"` // group names
	Enabled     bool        `json:"enabled"`
	Permissions Permissions `json:"permissions"`
	QuotaBytes  int64       `json:"quota_bytes"`
}

// Token roles.
const (
	RoleAdmin     = "admin"      // everything
	RoleSiteAdmin = "site_admin" // users of one site: create, edit, delete, reset passwords, read; nothing else
	RoleSiteAgent = "site_agent" // the sync feed of one site, nothing else
	RoleReader    = "reader"     // read everything except secrets
)

// Token is an API token. The secret is shown once at creation; only its
// hash is stored.
type Token struct {
	Meta
	Name       string     `json:"name"`
	Role       string     `json:"role"`
	Site       string     `json:"site,omitempty"` // for site_admin and site_agent
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	SecretHash string     `json:"-"` // SHA-256 of the secret, hex
}

// AuditEntry records one write.
type AuditEntry struct {
	ID         int64           `json:"id"`
	At         time.Time       `json:"at"`
	Actor      string          `json:"actor"`  // "token:<id> (<name>)"
	Action     string          `json:"action"` // e.g. "user.create", "user.move", "user.password", "import"
	TargetKind string          `json:"target_kind"`
	TargetID   string          `json:"target_id"`
	Diff       json.RawMessage `json:"diff"` // {"field": {"from": ..., "to": ...}}, secrets masked
}

// Change is one entry of the change log (the store appends it in the same
// transaction as the write). Data is the object's full stored state for
// upserts, secrets included in their stored (hashed/encrypted) form: the
// sync feed projects it per site; directory.changes never carries secrets.
type Change struct {
	Seq  int64           `json:"seq"`
	At   time.Time       `json:"at"`
	Kind string          `json:"kind"`
	ID   string          `json:"id"`
	Op   string          `json:"op"` // events.OpUpsert or events.OpDelete
	Data json.RawMessage `json:"data,omitempty"`
	// Actor is the actor of the transaction's first audit entry (see
	// events.DirectoryChange.Actor).
	Actor string `json:"actor,omitempty"`
}
