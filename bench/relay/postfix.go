package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// postfix is a private Postfix instance (its own config, queue and log
// directories under dir) listening on 127.0.0.1:port, relaying everything
// from 127.0.0.0/8 to the sink — the comparison point of the benchmark.
// It needs root (Postfix's master runs as root and drops privileges).
type postfix struct {
	dir string
}

func startPostfix(dir string, port int, sinkAddr string) (*postfix, error) {
	if _, err := exec.LookPath("postfix"); err != nil {
		return nil, fmt.Errorf("postfix is not installed (apt-get install postfix): %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("a private Postfix instance needs root")
	}
	pf, err := user.Lookup("postfix")
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"conf", "queue", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		return nil, err
	}
	// The smtpd listener moves to our port and out of the chroot (the
	// chroot would need a copy of /etc files).
	re := regexp.MustCompile(`(?m)^smtp\s+inet\s+.*smtpd$`)
	if !re.Match(master) {
		return nil, fmt.Errorf("/etc/postfix/master.cf has no smtp inet line")
	}
	master = re.ReplaceAll(master, fmt.Appendf(nil, "127.0.0.1:%d inet n - n - - smtpd", port))
	if err := os.WriteFile(filepath.Join(dir, "conf", "master.cf"), master, 0o644); err != nil {
		return nil, err
	}
	main := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [%[2]s]:%[3]s
myhostname = postfix.bench.invalid
mydestination =
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file_prefixes = %[1]s
maillog_file = %[1]s/maillog
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
message_size_limit = 26214400
default_process_limit = 100
smtp_destination_concurrency_limit = 20
`, dir, strings.Split(sinkAddr, ":")[0], strings.Split(sinkAddr, ":")[1])
	if err := os.WriteFile(filepath.Join(dir, "conf", "main.cf"), []byte(main), 0o644); err != nil {
		return nil, err
	}
	uid, gid := atoi(pf.Uid), atoi(pf.Gid)
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		return nil, err
	}
	p := &postfix{dir: dir}
	if out, err := p.run("set-permissions"); err != nil {
		return nil, fmt.Errorf("postfix set-permissions: %v: %s", err, out)
	}
	if out, err := p.run("start"); err != nil {
		return nil, fmt.Errorf("postfix start: %v: %s\n%s", err, out, p.log())
	}
	if err := waitListening(fmt.Sprintf("127.0.0.1:%d", port), 20*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("postfix did not start listening: %v\n%s", err, p.log())
	}
	return p, nil
}

// run runs `postfix -c conf cmd`. Postfix reports errors to syslog and,
// only when stderr is a terminal, to stderr: script(1) gives it one.
func (p *postfix) run(cmd string) (string, error) {
	out, err := exec.Command("script", "-qec", "postfix -c "+filepath.Join(p.dir, "conf")+" "+cmd, "/dev/null").CombinedOutput()
	return string(out), err
}

func (p *postfix) log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (p *postfix) stop() {
	_, _ = p.run("stop")
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}
