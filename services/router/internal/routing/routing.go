// Package routing decides where one inbound message goes: which local
// mailboxes, which other sites, which Internet recipients, what is refused and
// why, what to remember in the Message-ID index, and whether the message is a
// loop. It is pure decision logic over the site's directory replica and
// Message-ID index: it publishes nothing, writes no state and keeps no
// idempotency keys — the mail.inbound consumer does that with the [Decision]
// it gets from [Router.Route].
//
// # Who is "outside"
//
// A message comes from outside the organisation when it was downloaded from
// an ISP POP3 mailbox (source pop3), or when it came in over SMTP without an
// authenticated user and its envelope sender (MAIL FROM) is not in one of the
// organisation's domains (every site's domains); the null sender counts as
// outside. Authenticated submission (source smtp with AuthUser) and
// unauthenticated SMTP with an envelope sender in the organisation's domains
// (mail relayed by another site) are inside. The relay must therefore refuse
// unauthenticated MAIL FROM in the organisation's domains from anyone but
// the other sites; the router trusts the envelope it is given. A delivery
// status notification Postern wrote itself (source dsn, always with the null
// sender) is inside too, and may go to the Internet: that is how a bounce
// reaches an outside sender.
//
// # Mail from another site
//
// Mail that another site already routed (a [events.DestSite] delivery) must
// not be expanded again, or manager copies would be doubled. Such an inbound
// carries Source.AuthUser = [SiteAuthPrefix] + the sending site's name (the
// relay authenticates other sites that way). Its recipients are final
// mailboxes: each is delivered to the user owning the address, without group
// or shared-mailbox expansion, manager copies or permission checks (the first
// site did them); an address that is not a user's is routed by the ordinary
// rules.
//
// # Rules
//
// See [Router.Route] for the rules as implemented.
package routing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-message/mail"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
)

// Defaults of [Config].
const (
	DefaultMaxHops      = 30
	DefaultMessageIDTTL = 180 * 24 * time.Hour
)

// SiteAuthPrefix marks an inbound message relayed by another site of the
// organisation: Source.AuthUser is SiteAuthPrefix + the site's name.
const SiteAuthPrefix = "site:"

// UnknownPolicy says what happens to mail for an address in the
// organisation's domains that nobody owns.
type UnknownPolicy string

const (
	UnknownBounce     UnknownPolicy = "bounce"     // refused, and the sender is told (the default)
	UnknownPostmaster UnknownPolicy = "postmaster" // delivered to Config.Postmaster
)

// Config is the router's routing configuration.
type Config struct {
	// Site is this site's name (required).
	Site string
	// Unknown is the policy for unknown recipients; "" means UnknownBounce.
	Unknown UnknownPolicy
	// Postmaster is the address (a user's or a group's) that receives mail
	// for unknown recipients under UnknownPostmaster.
	Postmaster string
	// MaxHops is the most Received fields a message may carry; more is a
	// loop. 0 means DefaultMaxHops.
	MaxHops int
	// MessageIDTTL is how long Message-IDs of mail sent for a shared
	// mailbox are remembered. 0 means DefaultMessageIDTTL.
	MessageIDTTL time.Duration
}

// Validate reports the first bad setting, naming its key.
func (c Config) Validate() error {
	switch {
	case c.Site == "":
		return errors.New("site: must be set")
	case c.Unknown != "" && c.Unknown != UnknownBounce && c.Unknown != UnknownPostmaster:
		return fmt.Errorf("unknown_recipients: %q is neither %q nor %q", c.Unknown, UnknownBounce, UnknownPostmaster)
	case c.MaxHops < 0:
		return fmt.Errorf("max_hops: %d is negative", c.MaxHops)
	case c.MessageIDTTL < 0:
		return fmt.Errorf("message_id_ttl: %s is negative", c.MessageIDTTL)
	}
	if c.Unknown == UnknownPostmaster {
		if _, err := ParseAddress(c.Postmaster); err != nil {
			return fmt.Errorf("postmaster: %q is not an address (required with unknown_recipients %q)", c.Postmaster, UnknownPostmaster)
		}
	}
	return nil
}

// Decision is where one inbound message goes.
type Decision struct {
	// Deliveries are the destinations, in the order the recipients were
	// given, each mailbox and site user once. Their IDs are deterministic
	// (see Router.Route), so the consumer can use them as idempotency keys.
	Deliveries []events.Delivery
	// Rejections are the envelope recipients refused, in order.
	Rejections []Rejection
	// Skipped are mailboxes left out of an expansion (a group member or a
	// shared mailbox's staff member who is disabled, or may not receive
	// mail from outside). They are not failures: for logs and traces.
	Skipped []Skip
	// RecordMessageIDs are the Message-IDs the consumer must Put in the
	// Message-ID index once the deliveries are published (case 3).
	RecordMessageIDs []MessageIDRecord
	// DeadLetter, when not empty, is a permanent verdict on the whole
	// message (a mail loop, an invalid inbound record): nothing else is set
	// and the record goes to mail.deadletter with this reason.
	DeadLetter string
}

// Rejection is one envelope recipient that is refused.
type Rejection struct {
	Recipient string // as the sender wrote it
	Status    string // RFC 3463 enhanced status code, e.g. "5.1.1"
	Reason    string // for the DSN and mail.status; says what to do
	// Bounce says a DSN is due to the envelope sender. Never for the null
	// sender, and not for relay attempts from outside (backscatter).
	Bounce bool
}

// Skip is a mailbox left out of an expansion.
type Skip struct {
	Recipient string // the envelope recipient that was expanded
	Mailbox   string // user id
	Reason    string
}

// MessageIDRecord is one Message-ID to remember (MessageIndex.Put).
type MessageIDRecord struct {
	MessageID string // normalised (sitestate.NormalizeMessageID)
	Record    sitestate.MessageRecord
	TTL       time.Duration
}

// Router decides routes. It is safe for concurrent use.
type Router struct {
	cfg   Config
	dir   Directory
	index MessageIndex
}

// New returns a Router reading dir and index.
func New(cfg Config, dir Directory, index MessageIndex) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("routing config: %w", err)
	}
	if dir == nil || index == nil {
		return nil, errors.New("routing: directory and message index are required")
	}
	if cfg.Unknown == "" {
		cfg.Unknown = UnknownBounce
	}
	if cfg.MaxHops == 0 {
		cfg.MaxHops = DefaultMaxHops
	}
	if cfg.MessageIDTTL == 0 {
		cfg.MessageIDTTL = DefaultMessageIDTTL
	}
	return &Router{cfg: cfg, dir: dir, index: index}, nil
}

// Route decides where in goes. An error means the decision could not be
// made now (the directory or index did not answer): it is temporary, retry.
// Everything permanent is in the Decision.
//
// Rules, in order:
//
//  1. Loops: more than MaxHops Received fields, or a Delivered-To field
//     naming one of the envelope recipients in the organisation's domains
//     (the mark our relay leaves on final delivery; not checked for POP3
//     downloads, whose Delivered-To is the ISP's), dead-letter the message.
//  2. Each envelope recipient once (compared lower-cased). A malformed one is
//     refused (5.1.3). One outside the organisation's domains is outbound
//     (rule 8). Otherwise it is looked up exactly, then without its
//     +tag: a user's primary address or alias, a shared mailbox's address,
//     or a group's address.
//  3. A user: refused when disabled (5.2.1), or when the message is from
//     outside and the user lacks internet_receive (5.7.1). Delivered to the
//     user's mailbox: local when the user's home site is this one (or
//     unset), else to the home site. From outside, every shared mailbox the
//     user staffs also gets a copy to its manager (case 2).
//  4. A group: expanded recursively, each user once and each group once
//     (cycles are harmless); members who are disabled or may not receive
//     mail from outside are skipped; a group with no deliverable member is
//     refused (5.2.1).
//  5. A shared mailbox (cases 4 and 1): if In-Reply-To or References names
//     a Message-ID in the index sent by a current staff member for this
//     mailbox, that staff member and the manager; else if the message is
//     not forged and the display names given to the mailbox's address in
//     To/Cc match exactly one staff member's display name, that one and the
//     manager; else the manager, and every staff member when
//     forward_to_staff. The mailbox's address is open to the Internet:
//     its staff get this mail whatever their internet_receive.
//     "Forged": the message is from outside but its From (or envelope)
//     address is in the organisation's domains, or its From display name
//     is a staff member's display name; a forged message is never routed
//     by display name (a Message-ID match still counts).
//  6. Unknown: refused (5.1.1) or, under UnknownPostmaster, delivered to the
//     postmaster address's owner without permission checks.
//  7. The same mailbox reached twice gets one delivery, with the first
//     original recipient.
//  8. Outbound recipients: refused without a bounce when the message is
//     from outside (no open relay); allowed for a DSN (source dsn), which
//     is how a bounce reaches an outside sender; refused with a bounce when the sender
//     is not a known, enabled user with internet_send (for authenticated
//     submission the user is AuthUser, otherwise the owner of MAIL FROM).
//     Otherwise one outbound delivery for all of them. When the sender is
//     an authenticated staff member of a shared mailbox (case 3; the one
//     whose address is in From or MAIL FROM, else the only one they staff):
//     a copy of the message as submitted to the manager when
//     copy_outbound_to_manager (not when the manager is the sender); the
//     message's Message-ID is to be recorded in the index; when
//     rewrite_sender, the outbound message gets From and (if absent)
//     Reply-To "<staff display name>" <unified address>, loses Sender
//     (it would give the staff address away), gets a Message-ID when it has
//     none, and leaves with the unified address as envelope sender.
//
// Delivery IDs: "<inbound id>:local:<user id>",
// "<inbound id>:site:<site>:<user id>" and
// "<inbound id>:outbound:<16 hex digits of the SHA-256 of the sorted,
// lower-cased recipients>".
func (r *Router) Route(ctx context.Context, in events.Inbound) (Decision, error) {
	if err := in.Validate(); err != nil {
		return Decision{DeadLetter: err.Error()}, nil
	}
	rt := &route{r: r, ctx: ctx, in: in, dir: newDirView(r.dir), msg: parseMessage(in.Message), done: map[string]bool{}}
	if err := rt.run(); err != nil {
		return Decision{}, err
	}
	return rt.dec, nil
}

// route is the state of one Route call.
type route struct {
	r   *Router
	ctx context.Context
	in  events.Inbound
	dir *dirView
	msg *message
	dec Decision

	outside    bool
	system     bool          // a DSN Postern wrote: inside, and may go outbound
	fromSite   bool          // relayed by another site: recipients are final mailboxes
	authed     bool          // authenticated submission
	sender     *replica.User // the sending user, when known
	sentBy     string
	done       map[string]bool // user ids with a delivery
	outbound   []string
	outboundLC map[string]bool
}

func (rt *route) run() error {
	if reason, err := rt.loop(); err != nil || reason != "" {
		rt.dec = Decision{DeadLetter: reason}
		return err
	}
	if err := rt.classify(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, rcpt := range rt.in.Recipients {
		key := strings.ToLower(strings.TrimSpace(rcpt))
		if seen[key] {
			continue
		}
		seen[key] = true
		if err := rt.recipient(rcpt); err != nil {
			return err
		}
	}
	return rt.routeOutbound()
}

// loop returns a reason when the message is looping.
func (rt *route) loop() (string, error) {
	if n := rt.msg.count("Received"); n > rt.r.cfg.MaxHops {
		return fmt.Sprintf("mail loop: %d Received header fields, more than the limit of %d", n, rt.r.cfg.MaxHops), nil
	}
	if rt.in.Source.Kind == events.SourcePOP3 {
		return "", nil
	}
	rcpts := map[string]bool{}
	for _, rcpt := range rt.in.Recipients {
		if a, err := ParseAddress(rcpt); err == nil {
			rcpts[a.String()] = true
		}
	}
	for _, v := range rt.msg.header.Values("Delivered-To") {
		a, err := ParseAddress(v)
		if err != nil || !rcpts[a.String()] {
			continue
		}
		in, err := rt.dir.inOrg(rt.ctx, a.Domain)
		if err != nil {
			return "", err
		}
		if in {
			return fmt.Sprintf("mail loop: already delivered to %s (Delivered-To)", a), nil
		}
	}
	return "", nil
}

// classify works out where the message comes from and who sent it.
func (rt *route) classify() error {
	src := rt.in.Source
	switch {
	case src.Kind == events.SourcePOP3:
		rt.outside = true
	case src.Kind == events.SourceDSN:
		rt.system = true
	case strings.HasPrefix(src.AuthUser, SiteAuthPrefix):
		rt.fromSite = true
		return rt.senderByMailFrom()
	case src.AuthUser != "":
		rt.authed = true
		u, err := rt.dir.user(rt.ctx, src.AuthUser)
		if err == nil && u == nil {
			u, err = rt.dir.userByKey(rt.ctx, strings.ToLower(src.AuthUser))
		}
		if err != nil {
			return err
		}
		rt.sender = u
		rt.sentBy = src.AuthUser
	default:
		a, err := ParseAddress(rt.in.MailFrom)
		if err != nil {
			rt.outside = true // the null sender, or garbage
			return nil
		}
		in, err := rt.dir.inOrg(rt.ctx, a.Domain)
		if err != nil {
			return err
		}
		rt.outside = !in
		if in {
			return rt.senderByMailFrom()
		}
	}
	return nil
}

func (rt *route) senderByMailFrom() error {
	rt.sentBy = rt.in.MailFrom
	a, err := ParseAddress(rt.in.MailFrom)
	if err != nil {
		return nil
	}
	t, err := rt.dir.resolve(rt.ctx, a)
	rt.sender = t.user
	return err
}

func (rt *route) reject(rcpt, status, reason string) {
	rt.dec.Rejections = append(rt.dec.Rejections, Rejection{
		Recipient: rcpt, Status: status, Reason: reason, Bounce: rt.in.MailFrom != "",
	})
}

func (rt *route) skip(rcpt, mailbox, reason string) {
	rt.dec.Skipped = append(rt.dec.Skipped, Skip{Recipient: rcpt, Mailbox: mailbox, Reason: reason})
}

// recipient routes one envelope recipient.
func (rt *route) recipient(rcpt string) error {
	a, err := ParseAddress(rcpt)
	if err != nil {
		rt.reject(rcpt, "5.1.3", fmt.Sprintf("%q is not a valid mail address", rcpt))
		return nil
	}
	in, err := rt.dir.inOrg(rt.ctx, a.Domain)
	if err != nil {
		return err
	}
	if !in {
		if rt.outboundLC == nil {
			rt.outboundLC = map[string]bool{}
		}
		if !rt.outboundLC[a.String()] {
			rt.outboundLC[a.String()] = true
			rt.outbound = append(rt.outbound, strings.TrimSpace(rcpt))
		}
		return nil
	}
	t, err := rt.dir.resolve(rt.ctx, a)
	if err != nil {
		return err
	}
	switch {
	case t.user != nil && rt.fromSite:
		rt.deliver(t.user, rcpt)
		return nil
	case t.user != nil:
		return rt.toUser(t.user, rcpt)
	case t.group != nil:
		return rt.toGroup(t.group, rcpt, false)
	case t.shared != nil:
		return rt.toShared(t.shared, rcpt)
	}
	return rt.unknown(rcpt)
}

// deliver adds the delivery of a copy to u's mailbox, unless u has one.
func (rt *route) deliver(u *replica.User, rcpt string) {
	if rt.done[u.ID] {
		return
	}
	rt.done[u.ID] = true
	d := rt.delivery()
	to := u.PrimaryAddress
	if _, err := ParseAddress(to); err != nil {
		to = strings.TrimSpace(rcpt) // a user without a usable primary address
	}
	d.Recipients = []string{to}
	d.OriginalRecipient = strings.TrimSpace(rcpt)
	if u.Site == "" || u.Site == rt.r.cfg.Site {
		d.Destination, d.Mailbox = events.DestLocal, u.ID
		d.ID = rt.in.ID + ":local:" + u.ID
	} else {
		d.Destination, d.TargetSite = events.DestSite, u.Site
		d.ID = rt.in.ID + ":site:" + u.Site + ":" + u.ID
	}
	rt.dec.Deliveries = append(rt.dec.Deliveries, d)
}

func (rt *route) delivery() events.Delivery {
	return events.Delivery{
		InboundID: rt.in.ID,
		Site:      rt.r.cfg.Site,
		MailFrom:  rt.in.MailFrom,
		Source:    rt.in.Source,
		Message:   rt.in.Message,
	}
}

// toUser routes mail addressed to a user (rule 3, case 2).
func (rt *route) toUser(u *replica.User, rcpt string) error {
	if !u.Enabled {
		rt.reject(rcpt, "5.2.1", fmt.Sprintf("the mailbox %s is disabled", rcpt))
		return nil
	}
	if rt.outside && !u.Permissions.InternetReceive {
		rt.reject(rcpt, "5.7.1", fmt.Sprintf("%s does not receive mail from outside the organisation", rcpt))
		return nil
	}
	rt.deliver(u, rcpt)
	if !rt.outside {
		return nil
	}
	mbs, err := rt.dir.staffOf(rt.ctx, u.ID)
	if err != nil {
		return err
	}
	for _, m := range mbs {
		if _, err := rt.manager(m, rcpt); err != nil {
			return err
		}
	}
	return nil
}

// toGroup expands a group (rule 4). noChecks skips the permission check
// (postmaster).
func (rt *route) toGroup(g *replica.Group, rcpt string, noChecks bool) error {
	visited := map[string]bool{}
	delivered := 0
	var walk func(g *replica.Group) error
	walk = func(g *replica.Group) error {
		if visited[g.ID] {
			return nil
		}
		visited[g.ID] = true
		for _, m := range g.Members {
			switch m.Type {
			case replica.MemberUser:
				u, err := rt.dir.user(rt.ctx, m.ID)
				if err != nil {
					return err
				}
				switch {
				case u == nil:
					rt.skip(rcpt, m.ID, "no such user (the directory replica may be behind)")
				case !u.Enabled:
					rt.skip(rcpt, u.ID, "mailbox disabled")
				case rt.outside && !noChecks && !u.Permissions.InternetReceive:
					rt.skip(rcpt, u.ID, "does not receive mail from outside the organisation")
				default:
					rt.deliver(u, rcpt)
					delivered++
				}
			case replica.MemberGroup:
				sub, err := rt.dir.group(rt.ctx, m.ID)
				if err != nil {
					return err
				}
				if sub != nil {
					if err := walk(sub); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	if err := walk(g); err != nil {
		return err
	}
	if delivered == 0 {
		rt.reject(rcpt, "5.2.1", fmt.Sprintf("the group %s has no member who can receive this message", rcpt))
	}
	return nil
}

// manager adds the copy to m's manager; false when there is no enabled
// manager to copy to.
func (rt *route) manager(m *replica.SharedMailbox, rcpt string) (bool, error) {
	u, err := rt.dir.user(rt.ctx, m.Manager)
	if err != nil {
		return false, err
	}
	switch {
	case u == nil:
		rt.skip(rcpt, m.Manager, "manager of shared mailbox "+m.Address+" not found")
		return false, nil
	case !u.Enabled:
		rt.skip(rcpt, u.ID, "manager of shared mailbox "+m.Address+" is disabled")
		return false, nil
	}
	rt.deliver(u, rcpt)
	return true, nil
}

// toShared routes mail to a shared mailbox's unified address (cases 4, 1).
func (rt *route) toShared(m *replica.SharedMailbox, rcpt string) error {
	staff, err := rt.replyTo(m)
	if err != nil {
		return err
	}
	delivered := false
	if staff != nil {
		rt.deliver(staff, rcpt)
		delivered = true
	}
	ok, err := rt.manager(m, rcpt)
	if err != nil {
		return err
	}
	delivered = delivered || ok
	if staff == nil && m.ForwardToStaff {
		for _, id := range m.Staff {
			u, err := rt.dir.user(rt.ctx, id)
			if err != nil {
				return err
			}
			switch {
			case u == nil:
				rt.skip(rcpt, id, "staff member not found")
			case !u.Enabled:
				rt.skip(rcpt, id, "staff member disabled")
			default:
				rt.deliver(u, rcpt)
				delivered = true
			}
		}
	}
	if !delivered {
		rt.reject(rcpt, "5.2.1", fmt.Sprintf("the shared mailbox %s has no mailbox to deliver to", rcpt))
	}
	return nil
}

// replyTo finds the one staff member a reply to m is for (case 4), nil if
// none.
func (rt *route) replyTo(m *replica.SharedMailbox) (*replica.User, error) {
	for _, id := range rt.msg.referencedIDs() {
		rec, err := rt.r.index.Lookup(rt.ctx, id)
		if notFound(err) || errors.Is(err, sitestate.ErrInvalid) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("message-id index lookup: %w", err)
		}
		if rec.SharedMailboxID != m.ID || !m.HasStaff(rec.StaffUserID) {
			continue
		}
		u, err := rt.dir.user(rt.ctx, rec.StaffUserID)
		if err != nil {
			return nil, err
		}
		if u != nil && u.Enabled {
			return u, nil
		}
	}
	forged, err := rt.forged(m)
	if err != nil || forged {
		return nil, err
	}
	unified, err := ParseAddress(m.Address)
	if err != nil {
		return nil, nil
	}
	var names []string
	for _, key := range []string{"To", "Cc"} {
		for _, a := range rt.msg.addresses(key) {
			pa, err := ParseAddress(a.Address)
			if err != nil {
				continue
			}
			if base, ok := pa.WithoutTag(); ok {
				pa = base
			}
			if pa == unified && normName(a.Name) != "" {
				names = append(names, normName(a.Name))
			}
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	var match *replica.User
	for _, id := range m.Staff {
		u, err := rt.dir.user(rt.ctx, id)
		if err != nil {
			return nil, err
		}
		if u == nil || !u.Enabled || !slices.Contains(names, normName(u.Name())) {
			continue
		}
		if match != nil && match.ID != u.ID {
			return nil, nil // two staff members answer to the name: nobody
		}
		match = u
	}
	return match, nil
}

// forged reports whether a message to m claims to come from inside while it
// comes from outside (rule 5).
func (rt *route) forged(m *replica.SharedMailbox) (bool, error) {
	if !rt.outside {
		return false, nil
	}
	if a, err := ParseAddress(rt.in.MailFrom); err == nil {
		if in, err := rt.dir.inOrg(rt.ctx, a.Domain); err != nil || in {
			return in, err
		}
	}
	for _, f := range rt.msg.addresses("From") {
		if a, err := ParseAddress(f.Address); err == nil {
			if in, err := rt.dir.inOrg(rt.ctx, a.Domain); err != nil || in {
				return in, err
			}
		}
		if normName(f.Name) == "" {
			continue
		}
		for _, id := range m.Staff {
			u, err := rt.dir.user(rt.ctx, id)
			if err != nil {
				return false, err
			}
			if u != nil && normName(u.Name()) == normName(f.Name) {
				return true, nil
			}
		}
	}
	return false, nil
}

// normName is a display name as compared: spaces collapsed, case folded.
func normName(s string) string {
	return strings.ToLower(strings.Join(strings.Fields(s), " "))
}

// unknown handles an organisation address nobody owns (rule 6).
func (rt *route) unknown(rcpt string) error {
	if rt.r.cfg.Unknown == UnknownPostmaster {
		a, err := ParseAddress(rt.r.cfg.Postmaster)
		if err != nil {
			return err // Validate prevents it
		}
		t, err := rt.dir.resolve(rt.ctx, a)
		if err != nil {
			return err
		}
		switch {
		case t.user != nil && t.user.Enabled:
			rt.deliver(t.user, rcpt)
			return nil
		case t.group != nil:
			return rt.toGroup(t.group, rcpt, true)
		case t.shared != nil:
			if ok, err := rt.manager(t.shared, rcpt); err != nil || ok {
				return err
			}
		}
		rt.reject(rcpt, "5.1.1", fmt.Sprintf("no such mailbox: %s (and the postmaster address %s has no mailbox)", rcpt, rt.r.cfg.Postmaster))
		return nil
	}
	rt.reject(rcpt, "5.1.1", fmt.Sprintf("no such mailbox: %s", rcpt))
	return nil
}

// routeOutbound handles the recipients outside the organisation (rule 8).
func (rt *route) routeOutbound() error {
	if len(rt.outbound) == 0 {
		return nil
	}
	refuse := func(status, reason string, bounce bool) {
		for _, rcpt := range rt.outbound {
			rt.dec.Rejections = append(rt.dec.Rejections, Rejection{
				Recipient: rcpt, Status: status, Reason: reason, Bounce: bounce && rt.in.MailFrom != "",
			})
		}
	}
	u := rt.sender
	switch {
	case rt.outside || rt.fromSite:
		refuse("5.7.1", "relaying denied: mail from outside the organisation is not forwarded to outside recipients", false)
		return nil
	case rt.system:
		// A bounce to an outside sender: no user sends it.
	case u == nil:
		refuse("5.7.1", fmt.Sprintf("the sender %s is not a user of the organisation and may not send outside it", rt.sentBy), true)
		return nil
	case !u.Enabled:
		refuse("5.7.1", fmt.Sprintf("the sender %s is disabled", u.Username), true)
		return nil
	case !u.Permissions.InternetSend:
		refuse("5.7.1", fmt.Sprintf("the sender %s is not permitted to send mail outside the organisation; ask an administrator for the internet_send permission", u.Username), true)
		return nil
	}
	d := rt.delivery()
	d.Destination = events.DestOutbound
	d.Recipients = rt.outbound
	if len(rt.outbound) == 1 {
		d.OriginalRecipient = rt.outbound[0]
	}
	keys := make([]string, 0, len(rt.outbound))
	for k := range rt.outboundLC {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	sum := sha256.Sum256([]byte(strings.Join(keys, "\n")))
	d.ID = rt.in.ID + ":outbound:" + hex.EncodeToString(sum[:8])

	if rt.authed && u != nil {
		m, err := rt.senderMailbox(u)
		if err != nil {
			return err
		}
		if m != nil {
			ok, err := rt.staffOutbound(m, u, &d)
			if err != nil || !ok {
				return err
			}
		}
	}
	rt.dec.Deliveries = append(rt.dec.Deliveries, d)
	return nil
}

// senderMailbox returns the shared mailbox u sends for (case 3), nil if u is
// not staff or it cannot be told which of several.
func (rt *route) senderMailbox(u *replica.User) (*replica.SharedMailbox, error) {
	mbs, err := rt.dir.staffOf(rt.ctx, u.ID)
	if err != nil || len(mbs) == 0 {
		return nil, err
	}
	var claimed []string
	for _, f := range rt.msg.addresses("From") {
		if a, err := ParseAddress(f.Address); err == nil {
			claimed = append(claimed, a.String())
		}
	}
	if a, err := ParseAddress(rt.in.MailFrom); err == nil {
		claimed = append(claimed, a.String())
	}
	for _, c := range claimed {
		for _, m := range mbs {
			if a, err := ParseAddress(m.Address); err == nil && a.String() == c {
				return m, nil
			}
		}
	}
	if len(mbs) == 1 {
		return mbs[0], nil
	}
	return nil, nil
}

// staffOutbound applies case 3 to the outbound delivery d; false when the
// outbound recipients were refused instead.
func (rt *route) staffOutbound(m *replica.SharedMailbox, u *replica.User, d *events.Delivery) (bool, error) {
	msgID := rt.msg.messageID()
	if m.RewriteSender {
		unified, err := ParseAddress(m.Address)
		if err != nil {
			return false, fmt.Errorf("shared mailbox %s: address %q: %w", m.ID, m.Address, err)
		}
		name := u.Name()
		if strings.TrimSpace(u.DisplayName) == "" {
			for _, f := range rt.msg.addresses("From") {
				if f.Name != "" {
					name = f.Name
					break
				}
			}
		}
		from := &mail.Address{Name: name, Address: m.Address}
		rw := senderRewrite{From: from, ReplyTo: from}
		if msgID == "" {
			sum := sha256.Sum256([]byte(rt.in.ID))
			msgID = "postern." + hex.EncodeToString(sum[:12]) + "@" + unified.Domain
			rw.MessageID = msgID
		}
		out, err := rt.msg.rewrite(rw)
		if err != nil {
			for _, rcpt := range rt.outbound {
				rt.dec.Rejections = append(rt.dec.Rejections, Rejection{
					Recipient: rcpt, Status: "5.6.0", Bounce: rt.in.MailFrom != "",
					Reason: fmt.Sprintf("the message cannot be sent as %s: its header cannot be read (%v)", m.Address, err),
				})
			}
			return false, nil
		}
		d.Message = out
		d.MailFrom = m.Address
	}
	if m.CopyOutboundToManager && m.Manager != u.ID {
		if _, err := rt.manager(m, m.Address); err != nil {
			return false, err
		}
	}
	if msgID != "" {
		rt.dec.RecordMessageIDs = append(rt.dec.RecordMessageIDs, MessageIDRecord{
			MessageID: msgID,
			Record: sitestate.MessageRecord{
				StaffUserID: u.ID, SharedMailboxID: m.ID, Sender: d.MailFrom, At: rt.in.ReceivedAt,
			},
			TTL: rt.r.cfg.MessageIDTTL,
		})
	}
	return true, nil
}
