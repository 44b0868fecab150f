package download

import (
	"slices"
	"strings"
	"testing"
)

func org(dom string) bool { return dom == "example.com" || dom == "branch.example.org" }

func TestEnvelopeRecipients(t *testing.T) {
	def := []string{"Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Received"}
	tests := []struct {
		name    string
		header  string
		headers []string
		want    []string
	}{
		{"delivered-to", "Delivered-To: Alice@Example.COM\r\n", def, []string{"alice@example.com"}},
		{"first header wins over later ones",
			"X-Original-To: bob@example.com\r\nDelivered-To: alice@example.com\r\n", def, []string{"alice@example.com"}},
		{"foreign domain skipped, next header used",
			"Delivered-To: org@isp.example\r\nX-Original-To: <carol@branch.example.org>\r\n", def, []string{"carol@branch.example.org"}},
		{"first field with an org address, top down",
			"Delivered-To: org@isp.example\r\nDelivered-To: alice@example.com\r\nDelivered-To: bob@example.com\r\n", def, []string{"alice@example.com"}},
		{"envelope-to list", "Envelope-To: alice@example.com, stranger@other.net, Bob <bob@example.com>\r\n", def,
			[]string{"alice@example.com", "bob@example.com"}},
		{"received for",
			"Received: from mx.isp.example (mx [192.0.2.1])\r\n\tby pop.isp.example (Postfix) with ESMTPS id 4Xyz\r\n\tfor <alice@example.com>; Tue, 3 Mar 2026 10:00:00 +0100\r\n", def,
			[]string{"alice@example.com"}},
		{"received for without brackets", "Received: by x with SMTP id 1 for bob@example.com; Tue, 3 Mar 2026 10:00:00 +0100\r\n", def,
			[]string{"bob@example.com"}},
		{"received: for inside a comment is ignored", "Received: from x (looking for alice@example.com) by y; date\r\n", def, nil},
		{"received: the first Received naming an org address",
			"Received: from a by b for <org@isp.example>; d\r\nReceived: from c by d for <bob@example.com>; d\r\n", def, []string{"bob@example.com"}},
		{"account's own header list", "Delivered-To: alice@example.com\r\nX-Rcpt: bob@example.com\r\n", []string{"X-Rcpt"}, []string{"bob@example.com"}},
		{"nothing", "Subject: hi\r\nTo: alice@example.com\r\n", def, nil},
		{"garbage address", "Delivered-To: <<>>\r\nX-Original-To: not an address\r\n", def, nil},
		{"quoted local part with a space is not carried", "Delivered-To: \"a b\"@example.com\r\n", def, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := readHeaderInfo([]byte(tt.header + "\r\nbody\r\n")).h
			got := envelopeRecipients(h, tt.headers, org)
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestHeaderRecipients(t *testing.T) {
	h := readHeaderInfo([]byte("To: Alice <alice@example.com>, x@other.net\r\nCc: bob@example.com, alice@example.com\r\nBcc: <carol@branch.example.org>\r\n\r\n")).h
	got := headerRecipients(h, org)
	want := []string{"alice@example.com", "bob@example.com", "carol@branch.example.org"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestHeaderInfo(t *testing.T) {
	tests := []struct {
		header      string
		from, msgid string
	}{
		{"Return-Path: <Sender@Example.ORG>\r\nFrom: other@x.net\r\nMessage-ID: <Abc.1@Example.ORG>\r\n", "sender@example.org", "Abc.1@example.org"},
		{"Return-Path: <>\r\nFrom: MAILER-DAEMON@x.net\r\n", "", ""},
		{"From: \"Doe, John\" <john@x.net>\r\n", "john@x.net", ""},
		{"Sender: list@x.net\r\nFrom: john@x.net\r\n", "list@x.net", ""},
		{"From: nobody\r\nMessage-ID: <a b@c>\r\n", "", ""},
		// A broken line stops the header there; what came before counts.
		{"Message-ID: <1@x>\r\nFrom: a@x.net\r\nthis is not a header\r\nReturn-Path: <b@x.net>\r\n", "a@x.net", "1@x"},
	}
	for _, tt := range tests {
		h := readHeaderInfo([]byte(tt.header + "\r\nbody\r\n"))
		if h.mailFrom != tt.from || h.messageID != tt.msgid {
			t.Errorf("%q: mail from %q, message-id %q; want %q, %q", tt.header, h.mailFrom, h.messageID, tt.from, tt.msgid)
		}
	}
}

func TestRouteRecipients(t *testing.T) {
	multi := &route{headers: []string{"Delivered-To"}, domains: map[string]bool{"example.com": true}, postmaster: "pm@example.com"}
	h := readHeaderInfo([]byte("To: alice@example.com\r\n\r\n"))
	if got, pm := multi.recipients(h); !slices.Equal(got, []string{"pm@example.com"}) || !pm {
		t.Errorf("no envelope header, no fallback: %q %v; want the postmaster", got, pm)
	}
	multi.fallback = true
	if got, pm := multi.recipients(h); !slices.Equal(got, []string{"alice@example.com"}) || pm {
		t.Errorf("fallback to To: %q %v", got, pm)
	}
	multi.postmaster = ""
	if got, _ := multi.recipients(readHeaderInfo([]byte("Subject: x\r\n\r\n"))); len(got) != 0 {
		t.Errorf("without a postmaster: %q, want none (left on the server)", got)
	}
	single := &route{single: "bob@example.com"}
	if got, pm := single.recipients(h); !slices.Equal(got, []string{"bob@example.com"}) || pm {
		t.Errorf("single drop: %q %v", got, pm)
	}
}

func TestReceivedFor(t *testing.T) {
	tests := map[string][]string{
		"from a by b for <x@y.z>; date":                   {"x@y.z"},
		"from a by b with ESMTP id 1 for x@y.z; date":     {"x@y.z"},
		"from a by b for < x@y.z >; date":                 {"x@y.z"},
		"from a (for <no@y.z>) by b; date":                nil,
		"from a by b for <x@y.z> (comment); date":         {"x@y.z"},
		"from a by b; for <after@date.z>":                 nil,
		"from a by b for":                                 nil,
		"from a by b FOR <UP@Y.Z>; d":                     {"up@y.z"},
		"from a by b for multiple recipients; date":       nil,
		"from a by b for <x@y.z>, <w@y.z>; date":          {"x@y.z"},
		strings.Repeat("for ", 1000) + "<deep@y.z>; date": {"deep@y.z"},
	}
	for in, want := range tests {
		if got := receivedFor(in); !slices.Equal(got, want) {
			t.Errorf("receivedFor(%q) = %q, want %q", in, got, want)
		}
	}
}
