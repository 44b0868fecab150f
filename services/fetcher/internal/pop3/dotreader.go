package pop3

import (
	"bufio"
	"bytes"
	"io"
)

// dotReader streams the body of a multi-line response (RFC 1939 section 3),
// undoing the byte-stuffing: a line starting with "." loses that dot, and a
// line consisting of "." alone ends the response (io.EOF). Lines are
// delimited by LF; the CR before it is part of the data, so the bytes are
// delivered exactly as the server stored them. For leniency a bare ".\n"
// also ends the response. The end of the stream before the terminating
// line is io.ErrUnexpectedEOF.
//
// It never holds more than the bufio.Reader's buffer.
type dotReader struct {
	r         *bufio.Reader
	lineStart bool
	done      bool
	err       error
}

func newDotReader(r *bufio.Reader) *dotReader {
	return &dotReader{r: r, lineStart: true}
}

func (d *dotReader) Read(p []byte) (int, error) {
	if d.done {
		return 0, io.EOF
	}
	if d.err != nil {
		return 0, d.err
	}
	n := 0
	for n < len(p) {
		// Block for more input only while nothing has been delivered.
		if n > 0 && d.r.Buffered() == 0 {
			break
		}
		if d.lineStart {
			b, err := d.r.Peek(1)
			if err != nil {
				return n, d.fail(err)
			}
			if b[0] == '.' {
				// Look at what follows the dot: "\r\n" or "\n" ends the body.
				b, err := d.r.Peek(3)
				if len(b) >= 2 && b[1] == '\n' || len(b) >= 3 && b[1] == '\r' && b[2] == '\n' {
					d.r.Discard(len(b[:bytes.IndexByte(b, '\n')+1]))
					d.done = true
					if n > 0 {
						return n, nil
					}
					return 0, io.EOF
				}
				if err != nil && len(b) < 3 {
					// Fewer than three bytes before EOF: either ".\r" then
					// EOF (no terminator), or "." then EOF.
					if len(b) < 2 || b[1] == '\r' {
						return n, d.fail(err)
					}
				}
				d.r.Discard(1) // the stuffed dot
			}
			d.lineStart = false
			if n > 0 && d.r.Buffered() == 0 {
				break
			}
		}
		m := d.r.Buffered()
		if m == 0 {
			if _, err := d.r.Peek(1); err != nil {
				return n, d.fail(err)
			}
			m = d.r.Buffered()
		}
		m = min(m, len(p)-n)
		b, _ := d.r.Peek(m)
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[:i+1]
			d.lineStart = true
		}
		copy(p[n:], b)
		n += len(b)
		d.r.Discard(len(b))
	}
	return n, nil
}

func (d *dotReader) fail(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	d.err = err
	return err
}

// dotStuff returns msg byte-stuffed for a multi-line response, with the
// terminating ".\r\n" (after a CRLF added if msg does not end with LF).
// Tests and the fake server use it.
func dotStuff(msg []byte) []byte {
	var b bytes.Buffer
	b.Grow(len(msg) + len(msg)/64 + 5)
	lineStart := true
	for _, c := range msg {
		if lineStart && c == '.' {
			b.WriteByte('.')
		}
		b.WriteByte(c)
		lineStart = c == '\n'
	}
	if len(msg) > 0 && !lineStart {
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}
