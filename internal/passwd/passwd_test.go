package passwd

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/postern/postern/internal/testenv"
)

var argon2Form = regexp.MustCompile(`^\{ARGON2ID\}\$argon2id\$v=19\$m=65536,t=3,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)

func TestHashVerify(t *testing.T) {
	for _, pw := range []string{"correct horse", "pässwörd-ünïcode", "", strings.Repeat("x", 1024)} {
		h, err := Hash(pw)
		if err != nil {
			t.Fatalf("Hash: %v", err)
		}
		if !argon2Form.MatchString(h) {
			t.Errorf("hash %q is not in libsodium's argon2id form", h)
		}
		if err := CheckHash(h); err != nil {
			t.Errorf("CheckHash(our hash): %v", err)
		}
		if ok, err := Verify(h, pw); !ok || err != nil {
			t.Errorf("Verify(right password) = %v, %v", ok, err)
		}
		if ok, err := Verify(h, pw+"x"); ok || err != nil {
			t.Errorf("Verify(wrong password) = %v, %v", ok, err)
		}
	}
	a, _ := Hash("same password")
	b, _ := Hash("same password")
	if a == b {
		t.Error("two hashes of one password are equal: the salt is not random")
	}
}

func TestVerifyBcrypt(t *testing.T) {
	raw, err := bcrypt.GenerateFromPassword([]byte("bcrypt password"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for _, variant := range []string{"2a", "2b", "2y"} {
		h := "{BLF-CRYPT}$" + variant + string(raw[3:])
		if err := CheckHash(h); err != nil {
			t.Errorf("CheckHash(%s): %v", variant, err)
		}
		if ok, err := Verify(h, "bcrypt password"); !ok || err != nil {
			t.Errorf("Verify(%s, right) = %v, %v", variant, ok, err)
		}
		if ok, err := Verify(h, "bcrypt passwore"); ok || err != nil {
			t.Errorf("Verify(%s, wrong) = %v, %v", variant, ok, err)
		}
	}
}

func TestCheckHash(t *testing.T) {
	good := []string{
		"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=2$AAAAAAAAAAAAAAAAAAAAAA$e2Kuqgk5qP/WZoJ7jLn3N9W8QPp7BkmDOMqAMGlfNMY",
		"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$AAAAAAAAAAA$NMYuFTZKpBswhc8ZjIznAg", // 8-byte salt, 16-byte hash: libsodium's minimums
		"{BLF-CRYPT}$2y$05$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAAI6",
		"{BLF-CRYPT}$2b$12$zvkh3J6xb/SOdS61BtNCyuOpckTxZ7waGcONNl1YJXAM3d4d6R5Q.",
	}
	for _, h := range good {
		if err := CheckHash(h); err != nil {
			t.Errorf("CheckHash(%q) = %v", h, err)
		}
	}
	bad := []string{
		"",
		"secret",
		"$argon2id$v=19$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE", // no {SCHEME}
		"{argon2id}$argon2id$v=19$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2I}$argon2i$v=19$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2ID}$argon2i$v=19$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2ID}$argon2id$v=16$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2ID}$argon2id$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2ID}$argon2id$v=19$t=3,m=65536,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2ID}$argon2id$v=19$m=065536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2ID}$argon2id$v=19$m=4194304,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE", // 4 GiB
		"{ARGON2ID}$argon2id$v=19$m=65536,t=0,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=0$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE",
		"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg==$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE", // padding
		"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$AAAAAAAAAA$fwhzfJC6nmlNdIYFNQbe9A4cMaz/d3wpenei7Qp6TW8",               // 7-byte salt
		"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$AAAAAAAAAAAAAAAAAAAAAA$GHyijaaSb3r4tYppAw9w",                          // 15-byte hash
		"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE$",
		"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$sAmO-jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE", // URL alphabet
		"{BLF-CRYPT}$2x$05$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAAI6",
		"{BLF-CRYPT}$2y$5$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAAI6",
		"{BLF-CRYPT}$2y$03$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAAI6",
		"{BLF-CRYPT}$2y$32$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAAI6",
		"{BLF-CRYPT}$2y$05$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAAI",
		"{BLF-CRYPT}$2y$05$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAA+6",
		"{BLF-CRYPT}$2y$05$YTYusCNVo7P1PFKohbFbuPrUC9/hHazwR3qTdpQN1.t4mYWOkAAI6", // salt not canonical
		"{BLF-CRYPT}$2y$05$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAAI7", // hash not canonical
		"{SHA512-CRYPT}$6$salt$hash",
		"{PLAIN}secret",
		"{CLEAR}secret",
	}
	for _, h := range bad {
		if err := CheckHash(h); err == nil {
			t.Errorf("CheckHash(%q) = nil, want an error", h)
		}
		if _, err := Verify(h, "secret"); err == nil {
			t.Errorf("Verify(%q) accepted a hash CheckHash refuses", h)
		}
	}
	if err := CheckHash("{PLAIN}secret"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("error %v shows the value", err)
	}
}

// doveadm returns the path of doveadm, skipping the test when it is
// missing (failing under CI=true).
func doveadm(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("doveadm")
	if err != nil {
		msg := "doveadm not found: install Dovecot 2.3 (apt-get install dovecot-core) to check that Dovecot verifies our hashes"
		if testenv.InCI() {
			t.Fatalf("required tool missing (CI=true): %s", msg)
		}
		t.Skip(msg)
	}
	return p
}

// doveadmVerifies reports whether `doveadm pw -t hash -p pw` verifies.
func doveadmVerifies(t *testing.T, bin, hash, pw string) bool {
	t.Helper()
	out, err := exec.Command(bin, "pw", "-t", hash, "-p", pw).CombinedOutput()
	if err != nil {
		t.Logf("doveadm pw -t %s: %v: %s", hash, err, strings.TrimSpace(string(out)))
		return false
	}
	return strings.Contains(string(out), "(verified)")
}

func TestDovecotVerifiesOurHashes(t *testing.T) {
	bin := doveadm(t)
	const pw = "Dovecot-checks-this 1"
	h, err := Hash(pw)
	if err != nil {
		t.Fatal(err)
	}
	if !doveadmVerifies(t, bin, h, pw) {
		t.Errorf("doveadm does not verify our ARGON2ID hash %s", h)
	}
	if doveadmVerifies(t, bin, h, pw+"!") {
		t.Errorf("doveadm verifies our ARGON2ID hash with a wrong password")
	}
	raw, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for _, variant := range []string{"2a", "2b", "2y"} {
		bh := "{BLF-CRYPT}$" + variant + string(raw[3:])
		if err := CheckHash(bh); err != nil {
			t.Fatal(err)
		}
		if !doveadmVerifies(t, bin, bh, pw) {
			t.Errorf("doveadm does not verify the bcrypt hash %s", bh)
		}
	}
}

func TestWeVerifyDovecotHashes(t *testing.T) {
	bin := doveadm(t)
	const pw = "made by doveadm ü"
	for _, scheme := range []string{SchemeArgon2ID, SchemeBlfCrypt} {
		out, err := exec.Command(bin, "pw", "-s", scheme, "-p", pw).Output()
		if err != nil {
			t.Fatalf("doveadm pw -s %s: %v", scheme, err)
		}
		h := strings.TrimSpace(string(out))
		if err := CheckHash(h); err != nil {
			t.Errorf("CheckHash(%s from doveadm) = %v", h, err)
		}
		if ok, err := Verify(h, pw); !ok || err != nil {
			t.Errorf("Verify(%s from doveadm) = %v, %v", h, ok, err)
		}
		if ok, err := Verify(h, "made by doveadm u"); ok || err != nil {
			t.Errorf("Verify(%s, wrong) = %v, %v", h, ok, err)
		}
	}
}

func BenchmarkHash(b *testing.B) {
	for b.Loop() {
		if _, err := Hash("benchmark password"); err != nil {
			b.Fatal(err)
		}
	}
}
