package harness

import (
	"os"
	"path/filepath"
)

// Output is what the process printed on standard output, over all its
// starts (each introduced by a "=== harness: start" line).
func (p *Process) Output() string {
	b, err := os.ReadFile(filepath.Join(p.Dir, p.Name+".out"))
	if err != nil {
		return "(no output: " + err.Error() + ")"
	}
	return string(b)
}
