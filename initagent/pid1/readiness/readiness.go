// Package readiness defines the one console line that says a node is ready.
// Tests and the netboot server key on it, so its prefix never changes.
package readiness

import (
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// Prefix starts the readiness line.
const Prefix = "ballast: ready"

// Line is what the readiness line reports.
type Line struct {
	Hostname, Recipe, Role string
	Uptime                 time.Duration // time from the agent's start to ready
	Addresses              []netip.Prefix
}

// Announce writes the readiness line.
func Announce(w io.Writer, l Line) {
	addrs := make([]string, len(l.Addresses))
	for i, a := range l.Addresses {
		addrs[i] = a.String()
	}
	fmt.Fprintf(w, "%s hostname=%s recipe=%s role=%s agent_ms=%d addrs=%s\n", Prefix, l.Hostname, l.Recipe, l.Role,
		l.Uptime.Milliseconds(), strings.Join(addrs, ","))
}

// Pattern matches a readiness line and captures hostname and recipe.
var Pattern = regexp.MustCompile(`^ballast: ready hostname=(\S*) recipe=(\S*) role=(\S*) agent_ms=(\d+) addrs=(\S*)`)
