package events

import (
	"fmt"
	"time"
)

// Delivery record headers (mail.delivery, version 1), besides the envelope,
// source and received-at headers shared with mail.inbound.
const (
	HeaderDeliveryID        = "postern-delivery-id"        // unique per destination: idempotency key of the final delivery
	HeaderInboundID         = "postern-inbound-id"         // the mail.inbound record this came from
	HeaderDestination       = "postern-destination"        // DestLocal, DestSite or DestOutbound
	HeaderMailbox           = "postern-mailbox"            // local mailbox (user id) for DestLocal
	HeaderTargetSite        = "postern-target-site"        // site name for DestSite
	HeaderOriginalRecipient = "postern-original-recipient" // the address the sender used, before alias/group/shared-mailbox expansion
)

// Version of the mail.delivery record.
const DeliveryVersion = 1

// Kinds of destination.
const (
	DestLocal    = "local"    // a mailbox at this site
	DestSite     = "site"     // another site's relay
	DestOutbound = "outbound" // the Internet, through the smarthost
)

// Delivery is one destination of a routed message, on mail.delivery.
type Delivery struct {
	ID                string   // unique per destination (idempotency key of the final delivery)
	InboundID         string   // the mail.inbound record it came from
	Site              string   // the site that routed it
	Destination       string   // DestLocal, DestSite or DestOutbound
	Mailbox           string   // user id of the local mailbox (DestLocal)
	TargetSite        string   // site name (DestSite)
	MailFrom          string   // envelope sender to use ("" = null sender)
	Recipients        []string // envelope recipients for this destination
	OriginalRecipient string   // address as the sender wrote it
	Source            Source   // where the message entered Postern
	// ReceivedAt is when the edge (fetcher or SMTP listener) accepted the
	// message: the inbound record's ReceivedAt, copied by the router, so
	// the relay can measure latency from acceptance to final delivery.
	// Header postern-received-at; zero when absent (older records).
	ReceivedAt time.Time
	Message    []byte // the message as it must be delivered (after any rewrite)
}

// Validate reports the first missing or impossible field.
func (d Delivery) Validate() error {
	switch {
	case d.ID == "":
		return malformed("mail.delivery: id is empty")
	case d.InboundID == "":
		return malformed("mail.delivery %s: inbound id is empty", d.ID)
	case len(d.Recipients) == 0:
		return malformed("mail.delivery %s: no recipients", d.ID)
	case len(d.Message) == 0:
		return malformed("mail.delivery %s: empty message", d.ID)
	}
	switch d.Destination {
	case DestLocal:
		if d.Mailbox == "" {
			return malformed("mail.delivery %s: local destination without mailbox", d.ID)
		}
	case DestSite:
		if d.TargetSite == "" {
			return malformed("mail.delivery %s: site destination without target site", d.ID)
		}
	case DestOutbound:
	default:
		return malformed("mail.delivery %s: destination %q unknown", d.ID, d.Destination)
	}
	if err := validAddress(d.MailFrom); err != nil {
		return malformed("mail.delivery %s: mail from: %v", d.ID, err)
	}
	for _, r := range d.Recipients {
		if r == "" {
			return malformed("mail.delivery %s: empty recipient", d.ID)
		}
		if err := validAddress(r); err != nil {
			return malformed("mail.delivery %s: recipient: %v", d.ID, err)
		}
	}
	return nil
}

// Encode returns the record for mail.delivery, keyed by the inbound id.
func (d Delivery) Encode() (Record, error) {
	if err := d.Validate(); err != nil {
		return Record{}, err
	}
	var h headerWriter
	h.add(HeaderType, TopicDelivery)
	h.add(HeaderVersion, fmt.Sprint(DeliveryVersion))
	h.add(HeaderDeliveryID, d.ID)
	h.add(HeaderInboundID, d.InboundID)
	h.addOpt(HeaderSite, d.Site)
	h.add(HeaderDestination, d.Destination)
	h.addOpt(HeaderMailbox, d.Mailbox)
	h.addOpt(HeaderTargetSite, d.TargetSite)
	h.add(HeaderMailFrom, d.MailFrom)
	for _, r := range d.Recipients {
		h.add(HeaderRecipient, r)
	}
	h.addOpt(HeaderOriginalRecipient, d.OriginalRecipient)
	writeSource(&h, d.Source)
	h.addTime(HeaderReceivedAt, d.ReceivedAt)
	return Record{Key: []byte(d.InboundID), Value: d.Message, Headers: h}, nil
}

// DecodeDelivery reads a mail.delivery record.
func DecodeDelivery(r Record) (Delivery, error) {
	if err := checkType(r, TopicDelivery, DeliveryVersion); err != nil {
		return Delivery{}, err
	}
	hr := headerReader{r: r, typ: TopicDelivery}
	d := Delivery{
		ID:                hr.required(HeaderDeliveryID),
		InboundID:         hr.required(HeaderInboundID),
		Site:              hr.optional(HeaderSite),
		Destination:       hr.required(HeaderDestination),
		Mailbox:           hr.optional(HeaderMailbox),
		TargetSite:        hr.optional(HeaderTargetSite),
		MailFrom:          hr.optional(HeaderMailFrom),
		Recipients:        r.All(HeaderRecipient),
		OriginalRecipient: hr.optional(HeaderOriginalRecipient),
		Source:            readSource(&hr),
		ReceivedAt:        hr.time(HeaderReceivedAt, false),
		Message:           r.Value,
	}
	if hr.err != nil {
		return Delivery{}, hr.err
	}
	return d, d.Validate()
}
