package sitestate

import "fmt"

// checkIdempotencyKeys validates the keys of a batch call (ClaimAll,
// SeenAll): every one must be a valid key, so that a bad one fails the
// whole call before anything is read or written.
func checkIdempotencyKeys(keys []string) error {
	for i, k := range keys {
		if err := checkString("idempotency key", k); err != nil {
			return fmt.Errorf("key %d of %d: %w", i+1, len(keys), err)
		}
	}
	return nil
}

// describeKeys names the keys of a batch call in an error: the first one
// and how many there are.
func describeKeys(keys []string) string {
	switch len(keys) {
	case 1:
		return fmt.Sprintf("idempotency key %q", keys[0])
	default:
		return fmt.Sprintf("%d idempotency keys (the first %q)", len(keys), keys[0])
	}
}
