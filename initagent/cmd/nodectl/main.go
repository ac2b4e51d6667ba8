// Command nodectl manages ballast nodes through their API.
//
//	nodectl [--node NAME] status [-o json]
//	nodectl apply -f machine-config.yaml [--dry-run | --try 2m]
//	nodectl confirm [--generation N]
//	nodectl rollback [--system]
//	nodectl nodeip [--explain] [-o json]
//	nodectl logs [--service NAME] [-n 100] [-f]
//	nodectl reboot | shutdown
//	nodectl upgrade --image FILE|URL [--sha256 HEX]
//	nodectl metrics
//	nodectl pki init|issue|revoke ...
//	nodectl bootstrap
//	nodectl kubeconfig [-o FILE]
//	nodectl gen cluster-secrets [--out FILE]
//	nodectl lab up|status|down ...
//
// Nodes and credentials come from a nodeconfig (--nodeconfig, $BALLAST_NODECONFIG
// or ~/.config/ballast/nodeconfig.yaml); with --socket, or on a node without a
// nodeconfig, nodectl uses the agent's local socket.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/boottime"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "nodectl:", err)
		os.Exit(1)
	}
}

const usage = "usage: nodectl [--node NAME] status|apply|confirm|rollback|nodeip|logs|reboot|shutdown|upgrade|metrics|bootstrap|kubeconfig|pki|gen|lab [flags]"

// options are the flags every command accepts.
type options struct {
	socket, nodeconfig, node, output string
	timeout                          time.Duration
}

// target is where requests go.
type target struct {
	name   string
	base   string
	client *http.Client
}

func run(args []string, out io.Writer) error {
	// Global flags may come before the command.
	global := flag.NewFlagSet("nodectl", flag.ContinueOnError)
	var o options
	addCommon := func(fs *flag.FlagSet) {
		fs.StringVar(&o.socket, "socket", o.socket, "agent's local API socket (on the node)")
		fs.StringVar(&o.nodeconfig, "nodeconfig", o.nodeconfig, "nodeconfig file with node endpoints and credentials")
		fs.StringVar(&o.node, "node", o.node, "node name in the nodeconfig (default: its current)")
		fs.StringVar(&o.output, "o", o.output, "output: table or json")
		fs.DurationVar(&o.timeout, "timeout", o.timeout, "give up after this long")
	}
	o = options{output: "table", timeout: 60 * time.Second}
	addCommon(global)
	if err := global.Parse(args); err != nil {
		return err
	}
	args = global.Args()
	if len(args) == 0 {
		return errors.New(usage)
	}
	if args[0] == "pki" {
		return runPKI(args[1:], out)
	}
	if args[0] == "gen" {
		return runGen(args[1:], out)
	}
	if args[0] == "lab" {
		return runLab(args[1:], out)
	}
	fs := flag.NewFlagSet("nodectl "+args[0], flag.ContinueOnError)
	addCommon(fs)
	file := fs.String("f", "", "apply: machine config file (- for stdin)")
	dry := fs.Bool("dry-run", false, "apply: validate and show the change without applying it")
	try := fs.Duration("try", 0, "apply: roll the change back unless `nodectl confirm` follows within this time")
	explainFlag := fs.Bool("explain", false, "nodeip: list every candidate address and the rule that chose or rejected it")
	generation := fs.Uint64("generation", 0, "confirm: the generation to confirm (default: the one waiting)")
	system := fs.Bool("system", false, "rollback: make the other good system slot the default instead of the network config")
	service := fs.String("service", "", "logs: only this service (agent, api, dns, vip, apiproxy, …)")
	lines := fs.Int("n", 100, "logs: lines of history (0: all kept)")
	follow := fs.Bool("follow", false, "logs: keep streaming new lines")
	image := fs.String("image", "", "upgrade: the upgrade image, a file or an http(s) URL")
	imageSHA := fs.String("sha256", "", "upgrade: the image's expected sha256 (required for a URL)")
	// -f is apply's file; logs takes -f as follow, like tail.
	cmdArgs := args[1:]
	if args[0] == "logs" {
		for i, a := range cmdArgs {
			if a == "-f" || a == "--f" {
				cmdArgs[i] = "--follow"
			}
		}
	}
	if err := fs.Parse(cmdArgs); err != nil {
		return err
	}
	if args[0] == "kubeconfig" {
		// -o is the file to write, as with talosctl kubeconfig.
		file := o.output
		if file == "table" {
			file = ""
		}
		t, err := o.target()
		if err != nil {
			return err
		}
		return t.kubeconfig(out, file)
	}
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("-o %q: use table or json", o.output)
	}
	t, err := o.target()
	if err != nil {
		return err
	}
	switch args[0] {
	case "status":
		return t.status(out, o.output)
	case "apply":
		return t.apply(out, o.output, *file, *dry, *try)
	case "confirm":
		return t.recordCall(out, o.output, fmt.Sprintf("/v1/confirm?generation=%d", *generation))
	case "rollback":
		if *system {
			return t.simple(out, "/v1/rollback?target=system", nil, "")
		}
		return t.recordCall(out, o.output, "/v1/rollback?target=network")
	case "nodeip":
		return t.nodeIP(out, o.output, *explainFlag)
	case "logs":
		return t.logs(out, *service, *lines, *follow)
	case "reboot", "shutdown":
		return t.simple(out, "/v1/"+args[0], nil, "")
	case "upgrade":
		if *image == "" {
			return errors.New("upgrade needs --image FILE|URL")
		}
		f, sum, err := openImage(*image, *imageSHA)
		if err != nil {
			return err
		}
		defer f.Close()
		return t.simple(out, "/v1/upgrade?sha256="+sum, f, "application/octet-stream")
	case "bootstrap":
		return t.bootstrap(out)
	case "metrics":
		resp, err := t.do("GET", "/metrics", nil, "")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(out, resp.Body)
		return err
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

// target picks the local socket or a node from the nodeconfig.
func (o options) target() (*target, error) {
	path := o.nodeconfig
	if path == "" && o.socket == "" {
		path = defaultNodeConfig()
		if _, err := os.Stat(path); err != nil {
			if o.node != "" {
				return nil, fmt.Errorf("--node %s: no nodeconfig at %s: create one (see nodectl pki init) or pass --nodeconfig", o.node, path)
			}
			path = ""
		}
	}
	if path == "" {
		sock := o.socket
		if sock == "" {
			sock = api.SocketPath
		}
		return &target{name: "agent at " + sock, base: "http://agent", client: &http.Client{Timeout: o.timeout, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		}}}, nil
	}
	nc, err := loadNodeConfig(path)
	if err != nil {
		return nil, err
	}
	n, err := nc.node(o.node)
	if err != nil {
		return nil, err
	}
	c, err := nc.tlsClient(n, o.timeout)
	if err != nil {
		return nil, err
	}
	return &target{name: fmt.Sprintf("node %s (%s)", n.Name, n.Endpoint), base: "https://" + n.Endpoint, client: c}, nil
}

func (t *target) do(method, path string, body io.Reader, contentType string) (*http.Response, error) {
	req, err := http.NewRequest(method, t.base+path, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, explain(t.name, err)
	}
	return resp, nil
}

// decode reads a JSON answer; errors the node sent come back as errors.
func decode(resp *http.Response, v any) error {
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	return nil
}

func nodeError(resp *http.Response) error {
	var e api.ErrorResponse
	data, _ := io.ReadAll(resp.Body)
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return fmt.Errorf("%s", e.Error)
	}
	return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
}

// printBoot prints the boot timeline section, one milestone a line with
// its time since boot and since the one before; false if it is not one.
func printBoot(out io.Writer, section any) bool {
	raw, err := json.Marshal(section)
	if err != nil {
		return false
	}
	var marks []boottime.Mark
	if json.Unmarshal(raw, &marks) != nil {
		return false
	}
	fmt.Fprintln(out, "boot:")
	prev := 0.0
	for _, m := range marks {
		fmt.Fprintf(out, "  %8.3fs  +%7.3fs  %s\n", m.Seconds, m.Seconds-prev, m.Name)
		prev = m.Seconds
	}
	return true
}

func (t *target) status(out io.Writer, output string) error {
	resp, err := t.do("GET", "/v1/status", nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if output == "json" {
		var raw json.RawMessage
		if err := decode(resp, &raw); err != nil {
			return err
		}
		return printJSON(out, raw)
	}
	var st api.Status
	if err := decode(resp, &st); err != nil {
		return err
	}
	fmt.Fprintf(out, "node %s\n", st.Hostname)
	if st.NodeIP != "" {
		fmt.Fprintf(out, "node IP %s\n", st.NodeIP)
		for _, c := range st.NodeIPCandidates {
			fmt.Fprintf(out, "  %s\n", c)
		}
	}
	if n, ok := st.Network.(map[string]any); ok {
		for _, part := range []string{"Firewall", "Egress"} {
			lines, _ := n[part].([]any)
			if len(lines) > 0 {
				fmt.Fprintf(out, "%s:\n", strings.ToLower(part))
			}
			for _, l := range lines {
				fmt.Fprintf(out, "  %v\n", l)
			}
		}
	}
	var names []string
	for name := range st.Sections {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "boot" && printBoot(out, st.Sections[name]) {
			continue
		}
		b, _ := json.MarshalIndent(st.Sections[name], "  ", "  ")
		fmt.Fprintf(out, "%s:\n  %s\n", name, b)
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
}

func (t *target) apply(out io.Writer, output, file string, dry bool, try time.Duration) error {
	if file == "" {
		return errors.New("apply needs -f FILE")
	}
	if dry && try > 0 {
		return errors.New("--dry-run and --try exclude each other")
	}
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return err
	}
	path := "/v1/apply"
	switch {
	case dry:
		path += "?dryRun=true"
	case try > 0:
		path += "?confirmWithin=" + try.String()
	}
	return t.record(out, output, path, bytes.NewReader(data))
}

func (t *target) recordCall(out io.Writer, output, path string) error {
	return t.record(out, output, path, nil)
}

// record posts and prints the transaction record the node answers.
func (t *target) record(out io.Writer, output, path string, body io.Reader) error {
	resp, err := t.do("POST", path, body, "application/yaml")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var ar api.ApplyResponse
	if err := decode(resp, &ar); err != nil {
		return err
	}
	if output == "json" {
		if err := printJSON(out, ar); err != nil {
			return err
		}
	} else if !ar.Record.Started.IsZero() || ar.Record.State != "" {
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
		if !r.ConfirmBy.IsZero() {
			fmt.Fprintf(out, "  applied; run `nodectl confirm` before %s or it is rolled back\n", r.ConfirmBy.Local().Format(time.RFC3339))
		}
	}
	if ar.Error != "" {
		return fmt.Errorf("%s", strings.TrimSpace(ar.Error))
	}
	return nil
}

// simple posts and prints a JSON answer.
func (t *target) simple(out io.Writer, path string, body io.Reader, contentType string) error {
	resp, err := t.do("POST", path, body, contentType)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return nodeError(resp)
	}
	_, err = io.Copy(out, resp.Body)
	return err
}

func (t *target) nodeIP(out io.Writer, output string, explainAll bool) error {
	resp, err := t.do("GET", "/v1/nodeip", nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nodeError(resp)
	}
	var nr api.NodeIPResponse
	if err := decode(resp, &nr); err != nil {
		return err
	}
	switch {
	case output == "json":
		return printJSON(out, nr)
	case explainAll:
		fmt.Fprint(out, nr.Explanation)
	default:
		fmt.Fprintln(out, nr.KubeletArg)
	}
	return nil
}

func (t *target) logs(out io.Writer, service string, n int, follow bool) error {
	path := fmt.Sprintf("/v1/logs?lines=%d&service=%s&follow=%t", n, service, follow)
	if follow {
		t.client.Timeout = 0 // streams until interrupted
	}
	resp, err := t.do("GET", path, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nodeError(resp)
	}
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		if _, werr := io.WriteString(out, line); werr != nil {
			return werr
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// openImage opens an upgrade image, downloading a URL to a temporary file
// first, and returns it with its sha256, checked against want when given.
func openImage(src, want string) (*os.File, string, error) {
	var f *os.File
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		if want == "" {
			return nil, "", errors.New("--image URL needs --sha256: an image fetched over the network must be pinned")
		}
		resp, err := http.Get(src)
		if err != nil {
			return nil, "", fmt.Errorf("download %s: %w", src, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, "", fmt.Errorf("download %s: %s", src, resp.Status)
		}
		if f, err = os.CreateTemp("", "ballast-upgrade-*"); err != nil {
			return nil, "", err
		}
		os.Remove(f.Name()) // gone when closed
		if _, err := io.Copy(f, resp.Body); err != nil {
			f.Close()
			return nil, "", fmt.Errorf("download %s: %w", src, err)
		}
	} else {
		var err error
		if f, err = os.Open(src); err != nil {
			return nil, "", err
		}
	}
	h := sha256.New()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, "", err
	}
	if _, err := io.Copy(h, f); err != nil {
		f.Close()
		return nil, "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if want != "" && !strings.EqualFold(want, sum) {
		f.Close()
		return nil, "", fmt.Errorf("%s has sha256 %s, not the expected %s", src, sum, want)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, "", err
	}
	return f, sum, nil
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

// bootstrap asks a control plane to create the cluster's etcd.
func (t *target) bootstrap(out io.Writer) error {
	resp, err := t.do("POST", "/v1/bootstrap", nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nodeError(resp)
	}
	var r api.BootstrapResponse
	if err := decode(resp, &r); err != nil {
		return err
	}
	fmt.Fprintln(out, r.Message)
	return nil
}

// kubeconfig fetches an admin kubeconfig and writes it to file (stdout
// when file is empty or -).
func (t *target) kubeconfig(out io.Writer, file string) error {
	resp, err := t.do("POST", "/v1/kubeconfig", nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nodeError(resp)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if file == "" || file == "-" {
		_, err = out.Write(data)
		return err
	}
	if err := os.WriteFile(file, data, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s (cluster-admin; keep it private)\n", file)
	return nil
}
