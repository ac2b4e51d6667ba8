package boot

import (
	"fmt"
	"os"
	"strings"
)

// Cmdline is the kernel command line, split into arguments. Keys may repeat;
// the last value wins for Get.
type Cmdline struct {
	Args []string
}

// ReadCmdline reads /proc/cmdline.
func ReadCmdline() (Cmdline, error) {
	data, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return Cmdline{}, fmt.Errorf("read kernel cmdline: %w", err)
	}
	return ParseCmdline(string(data)), nil
}

// ParseCmdline splits a command line the way the kernel does: on spaces,
// with double quotes grouping (key="a b" gives key=a b).
func ParseCmdline(s string) Cmdline {
	var (
		args    []string
		cur     strings.Builder
		quoted  bool
		started bool
	)
	for _, r := range s {
		switch {
		case r == '"':
			quoted, started = !quoted, true
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if started {
				args = append(args, cur.String())
				cur.Reset()
				started = false
			}
		default:
			cur.WriteRune(r)
			started = true
		}
	}
	if started {
		args = append(args, cur.String())
	}
	return Cmdline{Args: args}
}

// Get returns the value of key (the last one if repeated) and whether the key
// is present. A bare flag "key" has the empty value.
func (c Cmdline) Get(key string) (string, bool) {
	val, found := "", false
	for _, a := range c.Args {
		k, v, _ := strings.Cut(a, "=")
		if k == key {
			val, found = v, true
		}
	}
	return val, found
}

// Ballast returns every ballast.* key with its value (last one wins).
func (c Cmdline) Ballast() map[string]string {
	m := map[string]string{}
	for _, a := range c.Args {
		k, v, _ := strings.Cut(a, "=")
		if strings.HasPrefix(k, "ballast.") {
			m[k] = v
		}
	}
	return m
}
