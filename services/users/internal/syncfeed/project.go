// Package syncfeed turns the users service's change log into what a reader
// may see: the AUM-Sync view of one site (its own users' password hashes,
// the POP3 accounts it downloads with their passwords, everyone's addresses
// and home sites for routing between sites) or the public view published on
// directory.changes (no secrets at all).
package syncfeed

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/services/users/internal/directory"
)

// Opener decrypts a POP3 password sealed at rest (directory.SecretBox).
type Opener interface {
	Open(sealed string) (string, error)
}

// Change is one change as a reader sees it.
type Change struct {
	Seq  int64           `json:"seq"`
	Kind string          `json:"kind"`
	ID   string          `json:"id"`
	Op   string          `json:"op"`
	Data json.RawMessage `json:"data,omitempty"`
	// Keys are the lookup keys of the object in a site's replica:
	// lower-cased addresses, usernames, names, domains.
	Keys []string `json:"keys,omitempty"`
}

// View says whose view to build.
type View struct {
	// Site is the site whose agent reads the feed; "" is the public view
	// (directory.changes), which carries no secret.
	Site string
	// Open decrypts POP3 passwords for the site's own accounts; required
	// when Site is set.
	Open Opener
	// Unopened, when set, is told of a POP3 password that Open cannot open
	// (sealed with a key no longer configured, say), by the account's id
	// and the id of the key that sealed it; the account is then projected
	// without its password rather than failing the whole view. When nil,
	// such a password is an error of Project.
	Unopened func(accountID, keyID string, err error)
}

// POP3AccountView is a POP3 account in a site's own view: its password in
// clear, for the fetcher that logs in with it.
type POP3AccountView struct {
	directory.POP3Account
	Password string `json:"password,omitempty"`
}

// Project returns c as v sees it. ok is false when the change is not for
// this view at all (templates: sites never need them).
func (v View) Project(c directory.Change) (out Change, ok bool, err error) {
	out = Change{Seq: c.Seq, Kind: c.Kind, ID: c.ID, Op: c.Op}
	switch c.Kind {
	case directory.KindSite, directory.KindUser, directory.KindGroup, directory.KindPOP3Account, directory.KindSharedMailbox:
	default:
		return Change{}, false, nil
	}
	if c.Op == events.OpDelete {
		return out, true, nil
	}
	data, keys, visible, err := v.project(c.Kind, c.Data)
	if err != nil {
		return Change{}, false, fmt.Errorf("%s %s (seq %d): %w", c.Kind, c.ID, c.Seq, err)
	}
	if !visible {
		// Not this site's to see (a POP3 account another site downloads,
		// perhaps one that moved away): a delete is always safe.
		out.Op = events.OpDelete
		return out, true, nil
	}
	out.Data, out.Keys = data, keys
	return out, true, nil
}

func (v View) project(kind string, raw json.RawMessage) (data json.RawMessage, keys []string, visible bool, err error) {
	switch kind {
	case directory.KindSite:
		var s directory.Site
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, nil, false, err
		}
		data, err = json.Marshal(s)
		return data, lower(s.Domains...), true, err
	case directory.KindUser:
		var u directory.User
		if err := json.Unmarshal(raw, &u); err != nil {
			return nil, nil, false, err
		}
		if v.Site == "" || u.Site != v.Site {
			u.PasswordHash = ""
		}
		data, err = json.Marshal(u)
		return data, lower(append([]string{u.Username, u.PrimaryAddress}, u.Aliases...)...), true, err
	case directory.KindGroup:
		var g directory.Group
		if err := json.Unmarshal(raw, &g); err != nil {
			return nil, nil, false, err
		}
		data, err = json.Marshal(g)
		return data, lower(g.Name, g.Address), true, err
	case directory.KindSharedMailbox:
		var m directory.SharedMailbox
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, nil, false, err
		}
		data, err = json.Marshal(m)
		return data, lower(m.Address), true, err
	case directory.KindPOP3Account:
		var a POP3AccountView
		if err := json.Unmarshal(raw, &a.POP3Account); err != nil {
			return nil, nil, false, err
		}
		sealed := a.PasswordEnc
		a.PasswordEnc = ""
		if v.Site != "" {
			if a.Site != v.Site {
				return nil, nil, false, nil
			}
			if sealed != "" {
				if v.Open == nil {
					return nil, nil, false, fmt.Errorf("no key to open the POP3 password")
				}
				if a.Password, err = v.Open.Open(sealed); err != nil {
					if v.Unopened == nil {
						return nil, nil, false, fmt.Errorf("opening the POP3 password: %w", err)
					}
					keyID, _ := directory.SealedKeyID(sealed)
					v.Unopened(a.ID, keyID, err)
					a.Password = ""
				}
			}
		}
		data, err = json.Marshal(a)
		return data, lower(a.Name), true, err
	}
	return nil, nil, false, fmt.Errorf("kind %q has no view", kind)
}

// lower returns the non-empty values lower-cased, sorted, without repeats.
func lower(values ...string) []string {
	var out []string
	for _, v := range values {
		if v = strings.ToLower(strings.TrimSpace(v)); v != "" {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
