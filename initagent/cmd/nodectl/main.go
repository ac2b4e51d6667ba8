// Command nodectl talks to a ballast node's agent.
//
//	nodectl status [-o json]
//	nodectl apply -f machine-config.yaml [--dry-run]
//	nodectl nodeip [--explain] [-o json]
//
// Until the network API exists it uses the agent's local socket.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ballast-os/ballast/initagent/api"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "nodectl:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: nodectl status|apply [flags]")
	}
	fs := flag.NewFlagSet("nodectl "+args[0], flag.ContinueOnError)
	socket := fs.String("socket", api.SocketPath, "agent's local API socket")
	output := fs.String("o", "table", "output: table or json")
	file := fs.String("f", "", "machine config file to apply (- for stdin)")
	dry := fs.Bool("dry-run", false, "validate and show the change without applying it")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	explain := fs.Bool("explain", false, "nodeip: list every candidate address and the rule that chose or rejected it")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", *socket)
		},
	}}
	switch args[0] {
	case "status":
		resp, err := client.Get("http://agent/v1/status")
		if err != nil {
			return fmt.Errorf("agent not reachable at %s: %w", *socket, err)
		}
		defer resp.Body.Close()
		var st api.Status
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(out, st)
		}
		fmt.Fprintf(out, "node %s\n", st.Hostname)
		if st.NodeIP != "" {
			fmt.Fprintf(out, "node IP %s\n", st.NodeIP)
			for _, c := range st.NodeIPCandidates {
				fmt.Fprintf(out, "  %s\n", c)
			}
		}
		fmt.Fprintln(out)
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "GEN\tSLOT\tORIGIN\tSTATE\tREASON\tFAILED PROBE\tSTARTED\tTOOK\tSHA256")
		for _, r := range st.Transactions {
			took := ""
			if !r.Finished.IsZero() {
				took = r.Finished.Sub(r.Started).Round(time.Millisecond).String()
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.12s\n", r.Generation, r.Slot, r.Origin, r.State, r.Reason,
				r.FailedProbe, r.Started.Format(time.RFC3339), took, r.SHA256)
		}
		return tw.Flush()
	case "apply":
		if *file == "" {
			return fmt.Errorf("apply needs -f FILE")
		}
		var data []byte
		var err error
		if *file == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(*file)
		}
		if err != nil {
			return err
		}
		url := "http://agent/v1/apply"
		if *dry {
			url += "?dryRun=true"
		}
		resp, err := client.Post(url, "application/yaml", bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("agent not reachable at %s: %w", *socket, err)
		}
		defer resp.Body.Close()
		var ar api.ApplyResponse
		if err := json.NewDecoder(resp.Body).Decode(&ar); err != nil {
			return err
		}
		if *output == "json" {
			if err := printJSON(out, ar); err != nil {
				return err
			}
		} else {
			r := ar.Record
			if r.Diff != "" {
				fmt.Fprintf(out, "changes against the running config:\n%s\n", r.Diff)
			}
			fmt.Fprintf(out, "generation %d slot %s: %s %s\n", r.Generation, r.Slot, r.State, r.Reason)
			for _, p := range r.Probes {
				fmt.Fprintf(out, "  probe %-40s before: %-6s after: %s\n", p.Name, short(p.Before), p.After)
			}
			if r.RolledBackTo != "" {
				fmt.Fprintf(out, "  rolled back to slot %s\n", r.RolledBackTo)
			}
		}
		if ar.Error != "" {
			return fmt.Errorf("%s", strings.TrimSpace(ar.Error))
		}
		return nil
	case "nodeip":
		resp, err := client.Get("http://agent/v1/nodeip")
		if err != nil {
			return fmt.Errorf("agent not reachable at %s: %w", *socket, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("agent: %s", strings.TrimSpace(string(b)))
		}
		var nr api.NodeIPResponse
		if err := json.NewDecoder(resp.Body).Decode(&nr); err != nil {
			return err
		}
		switch {
		case *output == "json":
			return printJSON(out, nr)
		case *explain:
			fmt.Fprint(out, nr.Explanation)
		default:
			fmt.Fprintln(out, nr.KubeletArg)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q: use status, apply or nodeip", args[0])
}

func short(s string) string {
	if len(s) > 6 {
		return s[:6]
	}
	return s
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
