package nodeip

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// String renders the decision for `nodectl nodeip --explain`: the result,
// then one row per candidate with its verdict and rule, then warnings.
func (d Decision) String() string {
	var b strings.Builder
	arg := d.KubeletArg()
	if arg == "" {
		arg = "(none)"
	}
	fmt.Fprintf(&b, "node IP: %s (%s first)\n", arg, d.Preferred)
	for _, f := range d.order() {
		if a := d.get(f); a.IsValid() {
			fmt.Fprintf(&b, "  %s: %s: %s\n", f, a, d.rule(f))
		} else {
			fmt.Fprintf(&b, "  %s: none\n", f)
		}
	}
	if d.Changed && d.Reason != "" {
		fmt.Fprintf(&b, "changed: %s\n", d.Reason)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tINTERFACE\tSUBNET\tVERDICT\tRULE")
	for _, c := range d.Candidates {
		subnet := c.Subnet.String()
		if c.SubnetSource != "" {
			subnet += " (" + c.SubnetSource + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Prefix, c.Link, subnet, c.Verdict, c.Rule)
	}
	tw.Flush()
	for _, a := range d.Unsettled {
		fmt.Fprintf(&b, "waiting: %s is still in duplicate address detection; decide again when it finishes\n", a)
	}
	for _, w := range d.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	return b.String()
}
