// Command conformance runs a fixed list of the upstream Kubernetes
// [Conformance] tests (sig-network and sig-node: Services, DNS for
// Services and pods, pod-to-pod and node-to-pod HTTP/UDP, NodePort) with
// the e2e.test of the pinned Kubernetes against a lab cluster of container
// nodes: 3 control planes and 1 worker with every node's firewall on.
//
// The test images (agnhost, glibc-dns-testing, busybox) are built from
// source and Debian packages and preloaded; no registry is involved. The
// control planes' NoSchedule taint is removed so the tests spread their
// pods over all four nodes (with the taint, the networking tests would only
// ever use the worker, i.e. never cross a node).
//
//	go run ./tools/conformance [-artifacts out/control-plane] [-report DIR] [-keep]
package main

import (
	"context"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/ballast-os/ballast/image/payload"
	"github.com/ballast-os/ballast/initagent/lab"
)

const labName = "conform"

// Tests are the spec texts run, without their trailing [tags].
var Tests = []string{
	"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http",
	"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp",
	"[sig-network] Networking Granular Checks: Pods should function for node-pod communication: http",
	"[sig-network] Networking Granular Checks: Pods should function for node-pod communication: udp",
	"[sig-network] Services should serve a basic endpoint from pods",
	"[sig-network] Services should serve multiport endpoints from pods",
	"[sig-network] Services should serve endpoints on same port and different protocols",
	"[sig-network] Services should be able to create a functioning NodePort service",
	"[sig-network] Services should have session affinity work for service with type clusterIP",
	"[sig-network] Services should have session affinity work for NodePort service",
	"[sig-network] Services should be able to switch session affinity for service with type clusterIP",
	"[sig-network] Services should be able to change the type from ExternalName to ClusterIP",
	"[sig-network] Services should be able to change the type from ExternalName to NodePort",
	"[sig-network] Services should be able to change the type from ClusterIP to ExternalName",
	"[sig-network] DNS should provide DNS for the cluster",
	"[sig-network] DNS should provide DNS for services",
	"[sig-network] DNS should provide DNS for pods for Hostname",
	"[sig-network] DNS should provide DNS for pods for Subdomain",
	"[sig-network] DNS should resolve DNS of partial qualified names for services",
	"[sig-network] DNS should provide /etc/hosts entries for the cluster",
	"[sig-network] DNS should provide DNS for ExternalName services",
	"[sig-network] DNS should support configurable pod DNS nameservers",
	"[sig-node] Pods should contain environment variables for services",
	"[sig-node] Pods should get a host IP",
	"[sig-node] Kubelet when scheduling a busybox command in a pod should print the output to logs",
	"[sig-node] KubeletManagedEtcHosts should test kubelet managed /etc/hosts file",
}

func main() {
	artifacts := flag.String("artifacts", "out/control-plane", "imgbuild output with initramfs.img and system.sqfs")
	report := flag.String("report", "out/conformance", "where e2e.test's log and JUnit report go")
	focus := flag.String("focus", "", "run only the listed tests whose text matches this regular expression")
	keep := flag.Bool("keep", false, "leave the lab running afterwards (remove it with `nodectl lab down`)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *artifacts, *report, *focus, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, artifacts, reportDir, focus string, keep bool) error {
	tests := Tests
	if focus != "" {
		re, err := regexp.Compile(focus)
		if err != nil {
			return fmt.Errorf("-focus: %w", err)
		}
		tests = nil
		for _, t := range Tests {
			if re.MatchString(t) {
				tests = append(tests, t)
			}
		}
		if len(tests) == 0 {
			return fmt.Errorf("-focus %q matches none of the listed tests", focus)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	progress := func(format string, args ...any) {
		fmt.Printf("%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
	b := &payload.Builder{Log: log}
	progress("building kubectl, ctr and e2e.test (the first build of e2e.test takes minutes)")
	bins, err := b.Build(ctx, payload.Kubectl, payload.Ctr, payload.E2E)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(reportDir, 0o755); err != nil {
		return err
	}
	reportDir, err = filepath.Abs(reportDir)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "ballast-conformance-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	archive := filepath.Join(work, "test-images.tar")
	progress("building the test images")
	if _, err := b.TestImageArchive(ctx, archive); err != nil {
		return err
	}
	dir := lab.DefaultDir(labName)
	if _, err := lab.Load(dir); err == nil {
		progress("removing the lab a previous run left in %s", dir)
		if err := lab.Down(dir, false, log); err != nil {
			return err
		}
	}
	progress("starting the lab (3 control planes + 1 worker, firewall on) in %s", dir)
	start := time.Now()
	s, err := lab.Up(ctx, lab.Options{Name: labName, Dir: dir, Provisioner: lab.ProvisionerContainer, ControlPlanes: 3, Workers: 1,
		Initramfs: filepath.Join(artifacts, "initramfs.img"), SystemImage: filepath.Join(artifacts, "system.sqfs"), Firewall: true, Log: log})
	if s != nil && !keep {
		defer func() {
			if err := lab.Down(dir, false, log); err != nil {
				fmt.Fprintln(os.Stderr, "lab down:", err)
			}
		}()
	}
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	if err := s.Wait(wctx, nil); err != nil {
		return err
	}
	progress("all nodes Ready after %v", time.Since(start).Round(time.Second))
	if err := s.ImportImages(ctx, bins[payload.Ctr], archive); err != nil {
		return err
	}
	kubectl := func(args ...string) error {
		out, err := exec.CommandContext(ctx, bins[payload.Kubectl], append([]string{"--kubeconfig", s.AdminKubeconfig()}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := kubectl("taint", "nodes", "-l", "node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/control-plane:NoSchedule-"); err != nil {
		return err
	}
	if err := kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=5m"); err != nil {
		return err
	}

	logPath := filepath.Join(reportDir, "e2e.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	args := []string{
		"-test.timeout=2h", "-test.v",
		"--kubeconfig=" + s.AdminKubeconfig(), "--provider=skeleton", "--kubectl-path=" + bins[payload.Kubectl],
		"--dns-domain=cluster.local", "--report-dir=" + reportDir, "--ginkgo.no-color", "--ginkgo.timeout=2h",
		// A spec that fails is run once more and, if it passes then, is
		// printed as FLAKEY (see specProgress) instead of failing the run:
		// the lab's API VIP still drops out for a moment now and then
		// under this load (see README, Conformance).
		"--ginkgo.flake-attempts=2",
	}
	for _, t := range tests {
		args = append(args, "--ginkgo.focus="+conformanceSpec(t))
	}
	progress("running %d conformance tests; log: %s", len(tests), logPath)
	e2eStart := time.Now()
	cmd := exec.CommandContext(ctx, bins[payload.E2EBinary], args...)
	cmd.Stdout, cmd.Stderr = io.MultiWriter(logFile, &specProgress{total: len(tests), start: time.Now()}), logFile
	runErr := cmd.Run()
	results, err := readJUnit(filepath.Join(reportDir, "junit_01.xml"))
	if err != nil {
		return fmt.Errorf("e2e.test: %v; its report: %w (see %s)", runErr, err, logPath)
	}
	failed := 0
	fmt.Printf("\n%-7s %8s  %s\n", "result", "seconds", "test")
	for _, t := range tests {
		r, ok := results.find(t)
		status := "MISSING"
		switch {
		case !ok:
		case r.Failure != nil:
			status = "FAIL"
		case r.Skipped != nil:
			status = "SKIP"
		default:
			status = "PASS"
		}
		if status != "PASS" {
			failed++
		}
		fmt.Printf("%-7s %8.1f  %s\n", status, r.Time, t)
	}
	for _, t := range tests {
		if r, ok := results.find(t); ok && r.Failure != nil {
			fmt.Printf("\nFAIL %s:\n%s\n", t, r.Failure.report(60))
		}
	}
	fmt.Printf("\n%d of %d passed in %v (lab up %v); log and JUnit report in %s\n",
		len(tests)-failed, len(tests), time.Since(e2eStart).Round(time.Second), e2eStart.Sub(start).Round(time.Second), reportDir)
	if failed > 0 {
		return fmt.Errorf("%d of %d tests did not pass (e2e.test: %v)", failed, len(tests), runErr)
	}
	return runErr
}

// specProgress follows e2e.test's output (the default reporter prints a
// "•" for every spec that ran) and prints a line per spec done, and the
// lines that say one failed.
type specProgress struct {
	total, done int
	start       time.Time
}

var failureLine = regexp.MustCompile(`^(• \[(FAILED|PANICKED|TIMEDOUT)\]|\[sig-|.*\[FLAKEY TEST)`)

func (p *specProgress) Write(b []byte) (int, error) {
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if failureLine.MatchString(l) {
			fmt.Printf("%s  %s\n", time.Now().Format("15:04:05"), l)
		}
		for range strings.Count(l, "•") {
			p.done++
			fmt.Printf("%s  %d of %d specs done (%v)\n", time.Now().Format("15:04:05"), p.done, p.total, time.Since(p.start).Round(time.Second))
		}
	}
	return len(b), nil
}

type junitCase struct {
	Name    string        `xml:"name,attr"`
	Time    float64       `xml:"time,attr"`
	Failure *junitFailure `xml:"failure"`
	Skipped *struct{}     `xml:"skipped"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

// failureReport is what a failed case says, cut to its first lines: the
// CI log must explain a failure without the report directory.
func (f *junitFailure) report(maxLines int) string {
	text := strings.TrimSpace(f.Text)
	if text == "" {
		text = strings.TrimSpace(f.Message)
	}
	lines := strings.Split(text, "\n")
	if len(lines) > maxLines {
		lines = append(lines[:maxLines], fmt.Sprintf("… %d more lines in the JUnit report", len(lines)-maxLines))
	}
	return "    " + strings.Join(lines, "\n    ")
}

type junitReport []junitCase

func readJUnit(path string) (junitReport, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Suites []struct {
			Cases []junitCase `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out junitReport
	for _, s := range doc.Suites {
		out = append(out, s.Cases...)
	}
	return out, nil
}

// conformanceSpec matches the full text of the [Conformance] spec test
// (its text, then tags): not the provider-specific variants some tests
// have under the same text with other tags.
func conformanceSpec(test string) string {
	return regexp.QuoteMeta(test) + `( \[[^]]+\])* \[Conformance\]`
}

// find is the [Conformance] case of test (JUnit names carry an "[It] "
// between the container's text and the spec's, and the tags).
func (r junitReport) find(test string) (junitCase, bool) {
	re := regexp.MustCompile(conformanceSpec(test))
	for _, c := range r {
		if re.MatchString(strings.Replace(c.Name, "[It] ", "", 1)) {
			return c, true
		}
	}
	return junitCase{}, false
}
