package harness

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RedisKeyPrefix returns a key prefix (state.redis.key_prefix) no other test
// uses on the Redis server at addr, and deletes every key under it when the
// test ends (the server may be shared: no FLUSHDB). Call it before starting
// the processes that use it, so that the keys are deleted after they are
// gone.
func RedisKeyPrefix(t testing.TB, addr string) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	prefix := "postern-e2e:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		if err := deleteRedisKeys(addr, prefix); err != nil {
			t.Logf("harness: deleting the Redis keys %s*: %v", prefix, err)
		}
	})
	return prefix
}

// deleteRedisKeys deletes the keys matching prefix* with SCAN and DEL, in
// the Redis protocol (RESP) directly: the harness needs no Redis client
// for two commands.
func deleteRedisKeys(addr, prefix string) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(conn)
	cursor := "0"
	for {
		reply, err := redisCommand(conn, r, "SCAN", cursor, "MATCH", redisGlobEscape(prefix)+"*", "COUNT", "1000")
		if err != nil {
			return err
		}
		parts, ok := reply.([]any)
		if !ok || len(parts) != 2 {
			return fmt.Errorf("SCAN: unexpected reply %v", reply)
		}
		cursor, _ = parts[0].(string)
		keys, _ := parts[1].([]any)
		if len(keys) > 0 {
			args := []string{"DEL"}
			for _, k := range keys {
				args = append(args, fmt.Sprint(k))
			}
			if _, err := redisCommand(conn, r, args...); err != nil {
				return err
			}
		}
		if cursor == "0" || cursor == "" {
			return nil
		}
	}
}

func redisGlobEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[]\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// redisCommand sends one command and reads its reply: a string, an int64,
// nil, or a []any of those.
func redisCommand(conn net.Conn, r *bufio.Reader, args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	return readRESP(r)
}

func readRESP(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, fmt.Errorf("empty RESP line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("redis: %s", line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readRESP(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected RESP line %q", line)
}
