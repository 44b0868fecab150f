package testenv

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

func TestSHA512Crypt(t *testing.T) {
	for _, tc := range []struct{ salt, password, want string }{
		// From https://www.akkadia.org/drepper/SHA-crypt.txt.
		{"saltstring", "Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
		// From `openssl passwd -6`: the salt is cut to 16 characters.
		{"saltstringsaltstring", "Hello world!", "$6$saltstringsaltst$e.3mR68CqZEpesEX1HlFZT6sEanSOjM/b5UoDyDo00a8syek2cJldMjrbtKP86.FJvzluVR7nc3DNzelAwTxj."},
		// From glibc crypt(3) (openssl refuses empty passwords).
		{"abcdefghijklmnop", "", "$6$abcdefghijklmnop$6.vC8ffobuN7AxcHvesxeeksF2DXFfpYyFt3PFU8pYpEQPhWFSN7hwaUQRfHg/LkfB3jIPEitUcU7ZTqjaQUp1"},
	} {
		if got := sha512CryptWithSalt(tc.password, tc.salt); got != tc.want {
			t.Errorf("sha512CryptWithSalt(%q, %q) = %q, want %q", tc.password, tc.salt, got, tc.want)
		}
	}

	h := SHA512Crypt("pw")
	if !regexp.MustCompile(`^\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}$`).MatchString(h) {
		t.Fatalf("SHA512Crypt = %q", h)
	}
	if SHA512Crypt("pw") == h {
		t.Error("two hashes of the same password are equal: salt not random")
	}

	// Cross-check with OpenSSL for passwords of various lengths (the
	// algorithm branches on lengths around the 64-byte digest size).
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed; skipping the cross-check")
	}
	for _, pw := range []string{"a", "Grüße", strings.Repeat("x", 63), strings.Repeat("y", 64), strings.Repeat("z", 65), strings.Repeat("pässwörd", 20)} {
		out, err := exec.Command("openssl", "passwd", "-6", "-salt", "abcdefghijklmnop", pw).Output()
		if err != nil {
			t.Fatalf("openssl passwd: %v", err)
		}
		if got, want := sha512CryptWithSalt(pw, "abcdefghijklmnop"), strings.TrimSpace(string(out)); got != want {
			t.Errorf("password %q: %q, openssl says %q", pw, got, want)
		}
	}
}
