package httpapi

import (
	"context"
	"fmt"
	"slices"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// maxPOP3PasswordLen bounds a POP3 password (bytes).
const maxPOP3PasswordLen = 1024

func pop3Response(a directory.POP3Account) usersapi.POP3AccountJSONResponse {
	return usersapi.POP3AccountJSONResponse{Body: pop3Out(a), Headers: usersapi.POP3AccountResponseHeaders{ETag: etag(a.Version)}}
}

func keepIn(k *usersapi.KeepPolicy) directory.KeepPolicy {
	if k == nil {
		return directory.KeepPolicy{}
	}
	return directory.KeepPolicy{Policy: string(k.Policy), Days: k.Days}
}

// seal checks and encrypts a POP3 password; the problem never holds it.
func (h *Handlers) seal(pw string) (string, error) {
	switch {
	case pw == "":
		return "", invalidField("password", "required: the password at the ISP")
	case len(pw) > maxPOP3PasswordLen:
		return "", invalidField("password", fmt.Sprintf("longer than %d bytes", maxPOP3PasswordLen))
	}
	sealed, err := h.box.Seal(pw)
	if err != nil {
		return "", fmt.Errorf("seal a POP3 password: %w", err)
	}
	return sealed, nil
}

func (h *Handlers) ListPOP3Accounts(ctx context.Context, req usersapi.ListPOP3AccountsRequestObject) (usersapi.ListPOP3AccountsResponseObject, error) {
	if _, err := canRead(ctx, directory.KindPOP3Account); err != nil {
		return nil, err
	}
	f := store.POP3AccountFilter{Page: page(req.Params.Cursor, req.Params.Limit), Site: lowerTrim(deref(req.Params.Site))}
	items, next, total, err := h.store.ListPOP3Accounts(ctx, f)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.ListPOP3Accounts200JSONResponse{Items: mapSlice(items, pop3Out), NextCursor: next, Total: int64(total)}, nil
}

func (h *Handlers) CreatePOP3Account(ctx context.Context, req usersapi.CreatePOP3AccountRequestObject) (usersapi.CreatePOP3AccountResponseObject, error) {
	p, err := canWrite(ctx, directory.KindPOP3Account)
	if err != nil {
		return nil, err
	}
	b := req.Body
	a := directory.POP3Account{
		Name: b.Name, Host: b.Host, Port: deref(b.Port), TLS: string(deref(b.TLS)),
		AllowInsecure: deref(b.AllowInsecure), TLSSkipVerify: deref(b.TLSSkipVerify), TLSFingerprint: deref(b.TLSFingerprint),
		Auth: string(deref(b.Auth)), Username: b.Username, Site: b.Site, Mode: string(deref(b.Mode)),
		TargetUser: deref(b.TargetUser), EnvelopeHeaders: deref(b.EnvelopeHeaders), LocalDomains: deref(b.LocalDomains),
		Postmaster: deref(b.Postmaster), FallbackToHeaders: deref(b.FallbackToHeaders), Keep: keepIn(b.Keep),
		PollIntervalSeconds: deref(b.PollIntervalSeconds), Enabled: derefOr(b.Enabled, true),
	}
	if a.Mode == "" { // the members given say which mode is meant
		a.Mode = directory.ModeMulti
		if a.TargetUser != "" {
			a.Mode = directory.ModeSingle
		}
	}
	var pwErr error
	a.PasswordEnc, pwErr = h.seal(deref(b.Password))
	if err := mergeValidation(a.Normalize(), validationOf(pwErr)); err != nil {
		return nil, err
	}
	if pwErr != nil {
		return nil, pwErr
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreatePOP3Account(ctx, &a); err != nil {
			return err
		}
		return audit(ctx, tx, p, "pop3_account.create", directory.KindPOP3Account, a.ID, nil, &a)
	})
	if err != nil {
		return nil, problemFor(err, &a)
	}
	return usersapi.CreatePOP3Account201JSONResponse{Body: pop3Out(a), Headers: usersapi.CreatePOP3Account201ResponseHeaders{
		ETag: etag(a.Version), Location: location("pop3-accounts", a.ID),
	}}, nil
}

// validationOf returns the directory validation error that p (a 422 of
// one or more members) stands for, so that it merges with others; nil
// for anything else.
func validationOf(err error) error {
	p, ok := err.(*problemError)
	if !ok || p.Type != typeValidation {
		return nil
	}
	var ve directory.ValidationError
	for _, f := range p.Errors {
		ve.Add(f.Field, f.Reason)
	}
	return ve.Err()
}

func (h *Handlers) GetPOP3Account(ctx context.Context, req usersapi.GetPOP3AccountRequestObject) (usersapi.GetPOP3AccountResponseObject, error) {
	if _, err := canRead(ctx, directory.KindPOP3Account); err != nil {
		return nil, err
	}
	a, err := h.store.GetPOP3Account(ctx, req.ID)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	if nm, err := notModified(req.Params.IfNoneMatch, a.Version); err != nil || nm {
		if err != nil {
			return nil, err
		}
		return usersapi.GetPOP3Account304Response{Headers: usersapi.NotModifiedResponseHeaders{ETag: etag(a.Version)}}, nil
	}
	return usersapi.GetPOP3Account200JSONResponse{POP3AccountJSONResponse: pop3Response(a)}, nil
}

func (h *Handlers) UpdatePOP3Account(ctx context.Context, req usersapi.UpdatePOP3AccountRequestObject) (usersapi.UpdatePOP3AccountResponseObject, error) {
	p, err := canWrite(ctx, directory.KindPOP3Account)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	b := req.Body
	sealed := ""
	if b.Password != nil {
		if sealed, err = h.seal(*b.Password); err != nil {
			return nil, err
		}
	}
	var a directory.POP3Account
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetPOP3Account(ctx, req.ID)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		a = cur
		a.EnvelopeHeaders, a.LocalDomains = slices.Clone(cur.EnvelopeHeaders), slices.Clone(cur.LocalDomains)
		applyPOP3Patch(&a, &cur, b)
		if sealed != "" {
			a.PasswordEnc = sealed
		}
		if err := a.Normalize(); err != nil {
			return err
		}
		if unchanged(cur, a) {
			a = cur
			return errNoChange
		}
		if err := tx.UpdatePOP3Account(ctx, &a, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "pop3_account.update", directory.KindPOP3Account, a.ID, &cur, &a)
	})
	if err != nil && err != errNoChange {
		return nil, problemFor(err, &a)
	}
	return usersapi.UpdatePOP3Account200JSONResponse{POP3AccountJSONResponse: pop3Response(a)}, nil
}

// applyPOP3Patch merges b into a (a copy of cur). Changing the mode
// clears the other mode's members unless b sets them; changing the TLS
// mode moves a default port to the new mode's default.
func applyPOP3Patch(a, cur *directory.POP3Account, b *usersapi.POP3AccountPatch) {
	set(&a.Host, b.Host)
	set(&a.Port, b.Port)
	if b.TLS != nil {
		a.TLS = string(*b.TLS)
	}
	set(&a.AllowInsecure, b.AllowInsecure)
	set(&a.TLSSkipVerify, b.TLSSkipVerify)
	set(&a.TLSFingerprint, b.TLSFingerprint)
	if b.Auth != nil {
		a.Auth = string(*b.Auth)
	}
	set(&a.Username, b.Username)
	set(&a.Site, b.Site)
	if b.Mode != nil {
		a.Mode = string(*b.Mode)
	}
	set(&a.TargetUser, b.TargetUser)
	setList(&a.EnvelopeHeaders, b.EnvelopeHeaders)
	setList(&a.LocalDomains, b.LocalDomains)
	set(&a.Postmaster, b.Postmaster)
	set(&a.FallbackToHeaders, b.FallbackToHeaders)
	if b.Keep != nil {
		a.Keep = keepIn(b.Keep)
	}
	set(&a.PollIntervalSeconds, b.PollIntervalSeconds)
	set(&a.Enabled, b.Enabled)

	if a.Mode != cur.Mode {
		switch a.Mode {
		case directory.ModeSingle:
			if b.EnvelopeHeaders == nil {
				a.EnvelopeHeaders = []string{}
			}
			if b.LocalDomains == nil {
				a.LocalDomains = []string{}
			}
			if b.Postmaster == nil {
				a.Postmaster = ""
			}
			if b.FallbackToHeaders == nil {
				a.FallbackToHeaders = false
			}
		case directory.ModeMulti:
			if b.TargetUser == nil {
				a.TargetUser = ""
			}
		}
	}
	if a.TLS != cur.TLS && b.Port == nil && cur.Port == defaultPOP3Port(cur.TLS) {
		a.Port = 0 // Normalize gives the new mode's default
	}
}

func defaultPOP3Port(tls string) int {
	if tls == directory.TLSImplicit {
		return directory.DefaultPOP3TLSPort
	}
	return directory.DefaultPOP3Port
}

func (h *Handlers) DeletePOP3Account(ctx context.Context, req usersapi.DeletePOP3AccountRequestObject) (usersapi.DeletePOP3AccountResponseObject, error) {
	p, err := canWrite(ctx, directory.KindPOP3Account)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetPOP3Account(ctx, req.ID)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		if err := tx.DeletePOP3Account(ctx, cur.ID, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "pop3_account.delete", directory.KindPOP3Account, cur.ID, &cur, nil)
	})
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.DeletePOP3Account204Response{}, nil
}
