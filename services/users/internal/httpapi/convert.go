package httpapi

import (
	"encoding/json"
	"net/url"
	"slices"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// The API's view of directory objects: secrets left out, lists never null.

func strs(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func siteOut(s directory.Site) usersapi.Site {
	return usersapi.Site{
		ID: s.ID, Version: s.Version, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt,
		Name: s.Name, Description: s.Description, Domains: strs(s.Domains), SMTPEndpoint: s.SMTPEndpoint,
	}
}

func userOut(u directory.User) usersapi.User {
	return usersapi.User{
		ID: u.ID, Version: u.Version, CreatedAt: u.CreatedAt, UpdatedAt: u.UpdatedAt,
		Username: u.Username, DisplayName: u.DisplayName, PrimaryAddress: u.PrimaryAddress,
		Aliases: strs(u.Aliases), Site: u.Site, Groups: strs(u.Groups), Enabled: u.Enabled,
		Permissions: usersapi.Permissions{InternetReceive: u.Permissions.InternetReceive, InternetSend: u.Permissions.InternetSend},
		QuotaBytes:  u.QuotaBytes,
	}
}

func groupOut(g directory.Group) usersapi.Group {
	members := make([]usersapi.Member, len(g.Members))
	for i, m := range g.Members {
		members[i] = usersapi.Member{Type: usersapi.MemberType(m.Type), ID: m.ID}
	}
	return usersapi.Group{
		ID: g.ID, Version: g.Version, CreatedAt: g.CreatedAt, UpdatedAt: g.UpdatedAt,
		Name: g.Name, Address: g.Address, Description: g.Description, Members: members,
	}
}

func membersIn(ms []usersapi.Member) []directory.Member {
	out := make([]directory.Member, len(ms))
	for i, m := range ms {
		out[i] = directory.Member{Type: string(m.Type), ID: m.ID}
	}
	return out
}

func pop3Out(a directory.POP3Account) usersapi.POP3Account {
	return usersapi.POP3Account{
		ID: a.ID, Version: a.Version, CreatedAt: a.CreatedAt, UpdatedAt: a.UpdatedAt,
		Name: a.Name, Host: a.Host, Port: a.Port, TLS: usersapi.TLSMode(a.TLS),
		AllowInsecure: a.AllowInsecure, TLSSkipVerify: a.TLSSkipVerify, TLSFingerprint: a.TLSFingerprint,
		Auth: usersapi.POP3Auth(a.Auth), Username: a.Username, Site: a.Site, Mode: usersapi.POP3Mode(a.Mode),
		TargetUser: a.TargetUser, EnvelopeHeaders: strs(a.EnvelopeHeaders), LocalDomains: strs(a.LocalDomains),
		Postmaster: a.Postmaster, FallbackToHeaders: a.FallbackToHeaders,
		Keep:                usersapi.KeepPolicy{Policy: usersapi.KeepPolicyKind(a.Keep.Policy), Days: a.Keep.Days},
		PollIntervalSeconds: a.PollIntervalSeconds, Enabled: a.Enabled,
	}
}

func mailboxOut(m directory.SharedMailbox) usersapi.SharedMailbox {
	return usersapi.SharedMailbox{
		ID: m.ID, Version: m.Version, CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt,
		Address: m.Address, DisplayName: m.DisplayName, Manager: m.Manager, Staff: strs(m.Staff),
		ForwardToStaff: m.ForwardToStaff, RewriteSender: m.RewriteSender, CopyOutboundToManager: m.CopyOutboundToManager,
	}
}

func templateOut(t directory.Template) usersapi.Template {
	return usersapi.Template{
		ID: t.ID, Version: t.Version, CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt,
		Name: t.Name, Site: t.Site, Groups: strs(t.Groups), Enabled: t.Enabled,
		Permissions: usersapi.Permissions{InternetReceive: t.Permissions.InternetReceive, InternetSend: t.Permissions.InternetSend},
		QuotaBytes:  t.QuotaBytes,
	}
}

func tokenOut(t directory.Token) usersapi.Token {
	return usersapi.Token{
		ID: t.ID, Version: t.Version, CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt,
		Name: t.Name, Role: usersapi.TokenRole(t.Role), Site: t.Site, LastUsedAt: t.LastUsedAt, ExpiresAt: t.ExpiresAt,
	}
}

func auditOut(e directory.AuditEntry) usersapi.AuditEntry {
	diff := e.Diff
	if len(diff) == 0 || !json.Valid(diff) {
		diff = json.RawMessage(`{}`)
	}
	return usersapi.AuditEntry{
		ID: e.ID, At: e.At, Actor: e.Actor, Action: e.Action, TargetKind: e.TargetKind, TargetID: e.TargetID, Diff: diff,
	}
}

func mapSlice[T, U any](in []T, f func(T) U) []U {
	out := make([]U, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}

// location is the path of an object: /v1/<collection>/<id>.
func location(collection, id string) string {
	return "/v1/" + collection + "/" + url.PathEscape(id)
}

// page is the store page of a list's cursor and limit parameters.
func page(cursor *string, limit *int) store.Page {
	var p store.Page
	if cursor != nil {
		p.Cursor = *cursor
	}
	if limit != nil {
		p.Limit = *limit
	}
	return p
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func derefOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// set applies a merge-patch member: a nil pointer leaves dst alone.
func set[T any](dst *T, src *T) {
	if src != nil {
		*dst = *src
	}
}

// setList applies a merge-patch list member: present replaces the whole
// list (a copy).
func setList[T any](dst *[]T, src *[]T) {
	if src != nil {
		*dst = append(make([]T, 0, len(*src)), *src...)
	}
}

// setPermissions merges a permissions patch member by member.
func setPermissions(dst *directory.Permissions, src *usersapi.PermissionsPatch) {
	if src == nil {
		return
	}
	set(&dst.InternetReceive, src.InternetReceive)
	set(&dst.InternetSend, src.InternetSend)
}

// defaultPermissions are those of a user or template created without
// them: a person's mailbox sends and receives Internet mail.
var defaultPermissions = directory.Permissions{InternetReceive: true, InternetSend: true}

// unchanged reports whether two objects have the same JSON form (a patch
// that changes nothing is not written).
func unchanged(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && slices.Equal(ja, jb)
}
