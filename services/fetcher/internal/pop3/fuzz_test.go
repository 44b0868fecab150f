package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestParseReply(t *testing.T) {
	tests := []struct {
		line    string
		cont    bool
		want    reply
		wantErr bool
	}{
		{line: "+OK", want: reply{status: statusOK}},
		{line: "+OK 2 320", want: reply{status: statusOK, text: "2 320"}},
		{line: "+ok lower case", want: reply{status: statusOK, text: "lower case"}},
		{line: "-ERR", want: reply{status: statusErr}},
		{line: "-ERR no such message", want: reply{status: statusErr, text: "no such message"}},
		{line: "-ERR [IN-USE] locked", want: reply{status: statusErr, code: "IN-USE", text: "[IN-USE] locked"}},
		{line: "-ERR [SYS/TEMP] try later", want: reply{status: statusErr, code: "SYS/TEMP", text: "[SYS/TEMP] try later"}},
		{line: "-ERR [] empty", want: reply{status: statusErr, text: "[] empty"}},
		{line: "+ ", cont: true, want: reply{status: statusCont}},
		{line: "+", cont: true, want: reply{status: statusCont}},
		{line: "+ ", wantErr: true},
		{line: "+OKAY", wantErr: true},
		{line: "OK", wantErr: true},
		{line: "", wantErr: true},
		{line: "* OK IMAP", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseReply([]byte(tt.line), tt.cont)
		if (err != nil) != tt.wantErr || (err == nil && got != tt.want) {
			t.Errorf("parseReply(%q, %v) = %+v, %v; want %+v, error %v", tt.line, tt.cont, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseListLine(t *testing.T) {
	tests := []struct {
		line string
		uidl bool
		num  int
		size int64
		uid  string
		ok   bool
	}{
		{"1 120", false, 1, 120, "", true},
		{"12 0", false, 12, 0, "", true},
		{"3 whqtswO00WBw418f9t5JxYwZ", true, 3, 0, "whqtswO00WBw418f9t5JxYwZ", true},
		{"1 120 extra", false, 1, 120, "", true},
		{"0 120", false, 0, 0, "", false},
		{"-1 120", false, 0, 0, "", false},
		{"1 -5", false, 0, 0, "", false},
		{"1", false, 0, 0, "", false},
		{"a b", true, 0, 0, "", false},
		{"1 uid\x7f", true, 0, 0, "", false},
	}
	for _, tt := range tests {
		num, size, uid, err := parseListLine([]byte(tt.line), tt.uidl)
		if (err == nil) != tt.ok || num != tt.num || size != tt.size || uid != tt.uid {
			t.Errorf("parseListLine(%q, %v) = %d, %d, %q, %v", tt.line, tt.uidl, num, size, uid, err)
		}
	}
}

func TestAPOPTimestamp(t *testing.T) {
	for in, want := range map[string]string{
		"POP3 server ready <1896.697170952@dbc.mtview.ca.us>": "<1896.697170952@dbc.mtview.ca.us>",
		"Dovecot ready.":        "",
		"ready <no at sign>":    "",
		"ready <unterminated@x": "",
	} {
		if got := apopTimestamp(in); got != want {
			t.Errorf("apopTimestamp(%q) = %q, want %q", in, got, want)
		}
	}
}

func unstuff(t testing.TB, wire []byte, wrap func(io.Reader) io.Reader) ([]byte, error) {
	br := bufio.NewReaderSize(wrap(bytes.NewReader(wire)), 16)
	return io.ReadAll(newDotReader(br))
}

func TestDotReader(t *testing.T) {
	tests := []struct {
		wire, want string
		err        error
	}{
		{".\r\n", "", nil},
		{"a\r\n.\r\n", "a\r\n", nil},
		{"..\r\n.\r\n", ".\r\n", nil},
		{"...\r\n.\r\n", "..\r\n", nil},
		{".a\r\n..b\r\n.\r\nrest", "a\r\n.b\r\n", nil},
		{"a.\r\n.b.\r\n.\r\n", "a.\r\nb.\r\n", nil}, // ".b." loses its first dot
		{"lf only\n.\n", "lf only\n", nil},
		{"a\r\n", "a\r\n", io.ErrUnexpectedEOF},
		{"a\r\n.", "a\r\n", io.ErrUnexpectedEOF},
		{"a\r\n.\r", "a\r\n", io.ErrUnexpectedEOF},
		{"", "", io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		for name, wrap := range map[string]func(io.Reader) io.Reader{
			"whole": func(r io.Reader) io.Reader { return r },
			"bytes": iotest.OneByteReader,
		} {
			got, err := unstuff(t, []byte(tt.wire), wrap)
			if string(got) != tt.want || !errors.Is(err, tt.err) && err != tt.err {
				t.Errorf("%s: unstuff(%q) = %q, %v; want %q, %v", name, tt.wire, got, err, tt.want, tt.err)
			}
		}
	}
	// The terminator's bytes are consumed, what follows is not.
	br := bufio.NewReader(strings.NewReader("x\r\n.\r\n+OK next\r\n"))
	io.ReadAll(newDotReader(br))
	if rest, _ := br.ReadString('\n'); rest != "+OK next\r\n" {
		t.Errorf("after the body: %q", rest)
	}
}

// FuzzParseReply: the status line and listing parsers never panic, and
// what they accept is consistent.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"+OK", "+OK 2 320", "-ERR [IN-USE] x", "-ERR", "+ ", "+", "1 120", "1 uid", "[", "-ERR [", "+OK <1.2@h>"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		for _, cont := range []bool{false, true} {
			r, err := parseReply(line, cont)
			if err != nil {
				continue
			}
			if !cont && r.status == statusCont {
				t.Fatalf("continuation accepted without cont: %q", line)
			}
			if r.code != "" && !strings.HasPrefix(r.text, "[") {
				t.Fatalf("code %q without bracket in %q", r.code, r.text)
			}
		}
		for _, uidl := range []bool{false, true} {
			num, size, _, err := parseListLine(line, uidl)
			if err == nil && (num < 1 || size < 0) {
				t.Fatalf("parseListLine(%q) = %d, %d", line, num, size)
			}
		}
		if n, size, err := parseStat(string(line)); err == nil && (n < 0 || size < 0) {
			t.Fatalf("parseStat(%q) = %d, %d", line, n, size)
		}
		apopTimestamp(string(line))
		Capabilities{}.add(line)
	})
}

// FuzzDotStuffing: unstuffing the stuffed message gives back the message
// (with a CRLF appended if it did not end with LF), read whole or byte by
// byte; and unstuffing arbitrary input never panics.
func FuzzDotStuffing(f *testing.F) {
	for _, s := range []string{"", ".", "..", ".\r\n", "a\r\n.\r\nb", "\n.\n", ".\r", "x\r\n..\r\n...\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		want := msg
		if len(msg) > 0 && msg[len(msg)-1] != '\n' {
			want = append(append([]byte(nil), msg...), '\r', '\n')
		}
		wire := append(dotStuff(msg), "+OK after"...)
		for _, wrap := range []func(io.Reader) io.Reader{func(r io.Reader) io.Reader { return r }, iotest.OneByteReader, iotest.HalfReader} {
			got, err := unstuff(t, wire, wrap)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("round trip of %q: got %q, %v", msg, got, err)
			}
		}
		// Arbitrary input as a wire body.
		unstuff(t, msg, iotest.OneByteReader)
	})
}
