package events

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestRetryRoundTrip(t *testing.T) {
	r := Retry{
		Delivery: Delivery{ID: "d3", InboundID: "i2", Destination: DestOutbound, MailFrom: "sales@example.com",
			Recipients: []string{"c2@example.net"}, Source: Source{Kind: SourceSMTP, AuthUser: "u"}, Message: rawMessage},
		Attempt: 3, NextAttempt: at.Add(2 * time.Minute), FirstAttempt: at,
		LastCode: 451, LastError: "451 4.3.0 try again later", Partial: true,
	}
	rec, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// A retry record is a delivery record: the delivery decoder reads it.
	d, err := DecodeDelivery(rec)
	if err != nil {
		t.Fatalf("DecodeDelivery of a retry record: %v", err)
	}
	if !reflect.DeepEqual(d, r.Delivery) {
		t.Errorf("delivery:\n got %+v\nwant %+v", d, r.Delivery)
	}
	out, err := DecodeRetry(rec)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out, r) {
		t.Errorf("round trip:\n got %+v\nwant %+v", out, r)
	}
	if got := RetryTopics(3); !reflect.DeepEqual(got, []string{"mail.retry.0", "mail.retry.1", "mail.retry.2"}) {
		t.Errorf("RetryTopics(3) = %q", got)
	}
}

func TestDecodeRetryRefusesIncompleteRecords(t *testing.T) {
	d := Delivery{ID: "d", InboundID: "i", Destination: DestOutbound, Recipients: []string{"a@example.net"}, Source: Source{Kind: SourceSMTP}, Message: rawMessage}
	plain, _ := d.Encode()
	if _, err := DecodeRetry(plain); !errors.Is(err, ErrMalformed) {
		t.Errorf("delivery without retry headers: err = %v, want ErrMalformed", err)
	}
	for name, r := range map[string]Retry{
		"attempt 1":     {Delivery: d, Attempt: 1, NextAttempt: at, FirstAttempt: at},
		"no next":       {Delivery: d, Attempt: 2, FirstAttempt: at},
		"no first":      {Delivery: d, Attempt: 2, NextAttempt: at},
		"bad code":      {Delivery: d, Attempt: 2, NextAttempt: at, FirstAttempt: at, LastCode: 1000},
		"line in error": {Delivery: d, Attempt: 2, NextAttempt: at, FirstAttempt: at, LastError: "a\r\nb"},
	} {
		if _, err := r.Encode(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Encode err = %v, want ErrMalformed", name, err)
		}
	}
}
