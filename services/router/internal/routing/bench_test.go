package routing

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/sitestate"
)

// BenchmarkRoute measures one Route call — the time routing itself takes
// per message, directory and Message-ID index lookups on the real SQLite
// site state included — over a mix of messages: a local user, an alias
// with a tag and another site's user, a group expansion, a reply to a
// shared mailbox found through the Message-ID index, a staff member's
// outbound mail with the sender rewrite and the manager's copy, and mail
// from outside to a staff address (manager copies).
func BenchmarkRoute(b *testing.B) {
	for _, size := range []int{4 << 10, 40 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			ctx := context.Background()
			st := newStore(b)
			if err := st.MessageIndex().Put(ctx, "zs-1@example.com", sitestate.MessageRecord{StaffUserID: "u-zs", SharedMailboxID: "sm-sales", Sender: "sales@example.com", At: time.Now()}, time.Hour); err != nil {
				b.Fatal(err)
			}
			r := newRouter(b, st, Config{})
			body := func(header ...string) []byte {
				h := strings.Join(header, "\r\n") + "\r\n\r\n"
				line := "The quick brown fox jumps over the lazy dog, again and again.\r\n"
				return []byte(h + strings.Repeat(line, max(0, (size-len(h))/len(line))))
			}
			customer := body("From: Customer <c@customer.net>", "To: someone@example.com", "Subject: hi", "Message-ID: <m1@customer.net>")
			reply := body("From: Customer <c@customer.net>", `To: "Sales" <sales@example.com>`, "Subject: Re: offer", "Message-ID: <r1@customer.net>", "In-Reply-To: <zs-1@example.com>")
			staff := body(`From: "Zhangsan" <sales@example.com>`, "To: c@customer.net", "Subject: offer", "Message-ID: <zs-2@example.com>")
			ins := []events.Inbound{
				inbound("smtp", "c@customer.net", customer, "alice@example.com"),
				inbound("pop3", "c@customer.net", customer, "a.archer+news@example.com", "carol@example.com"),
				inbound("auth:u-bob", "bob@example.com", customer, "team@example.com"),
				inbound("smtp", "c@customer.net", reply, "sales@example.com"),
				inbound("auth:u-zs", "zhangsan@example.com", staff, "c@customer.net"),
				inbound("smtp", "c@customer.net", customer, "zhangsan@example.com"),
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				dec, err := r.Route(ctx, ins[i%len(ins)])
				if err != nil || len(dec.Deliveries) == 0 {
					b.Fatalf("Route: %+v, %v", dec, err)
				}
			}
		})
	}
}
