// Command services measures what a Service costs a pod (issue 20): on a lab
// cluster of container nodes (1 control plane, 2 workers) with 10 agnhost
// netexec endpoints, a client pod on a worker makes sequential HTTP
// requests, each on a new TCP connection (connect, GET /hostname, read,
// close), to the Service's ClusterIP (kube-proxy's nftables DNAT with
// random endpoint choice) and, alternating, to the endpoints' pod IPs
// directly in turn: requests per second and p50/p99 latency. The load runs
// in the client pod's network namespace: this program enters it (nsenter)
// and runs itself there.
//
//	go run ./tools/bench/services [-artifacts out/control-plane] [-runs 5] [-seconds 5]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ballast-os/ballast/image/payload"
	"github.com/ballast-os/ballast/initagent/lab"
	"github.com/ballast-os/ballast/tools/bench/internal/stats"
)

func main() {
	artifacts := flag.String("artifacts", "out/control-plane", "imgbuild output with initramfs.img and system.sqfs")
	runs := flag.Int("runs", 5, "alternating runs per target")
	seconds := flag.Float64("seconds", 5, "length of each run")
	load := flag.String("load", "", "internal: run the load against these comma-separated host:port targets and print JSON")
	flag.Parse()
	d := time.Duration(*seconds * float64(time.Second))
	if *load != "" {
		r := runLoad(strings.Split(*load, ","), d)
		_ = json.NewEncoder(os.Stdout).Encode(r)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *artifacts, *runs, d); err != nil {
		fmt.Fprintln(os.Stderr, "bench services:", err)
		os.Exit(1)
	}
}

// result is one load run.
type result struct {
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	Seconds  float64 `json:"seconds"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
}

// runLoad requests GET /hostname on a new connection each time, cycling
// through targets, for d.
func runLoad(targets []string, d time.Duration) result {
	var lat []time.Duration
	var r result
	start := time.Now()
	for i := 0; time.Since(start) < d; i++ {
		t := time.Now()
		if err := request(targets[i%len(targets)]); err != nil {
			r.Errors++
			continue
		}
		lat = append(lat, time.Since(t))
	}
	r.Seconds = time.Since(start).Seconds()
	r.Requests = len(lat)
	slices.Sort(lat)
	if len(lat) > 0 {
		r.P50us = float64(lat[len(lat)/2].Microseconds())
		r.P99us = float64(lat[len(lat)*99/100].Microseconds())
	}
	return r
}

func request(target string) error {
	c, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "GET /hostname HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	status, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(status, " 200 ") {
		return fmt.Errorf("status %q", status)
	}
	// Read to the server's close: the server ends the connection, so the
	// client keeps no TIME_WAIT socket, which would slow its next
	// connect() to the same destination (one ClusterIP) more than to ten
	// pod IPs in turn.
	_, err = io.Copy(io.Discard, r)
	return err
}

func run(ctx context.Context, artifacts string, runs int, d time.Duration) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b := &payload.Builder{Log: log}
	bins, err := b.Build(ctx, payload.Kubectl, payload.Ctr)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "ballast-bench-services-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	archive := filepath.Join(work, "test-images.tar")
	images, err := b.TestImageArchive(ctx, archive)
	if err != nil {
		return err
	}
	dir := filepath.Join(work, "lab")
	s, err := lab.Up(ctx, lab.Options{Name: "bsvc", Dir: dir, Provisioner: lab.ProvisionerContainer, ControlPlanes: 1, Workers: 2,
		Initramfs: filepath.Join(artifacts, "initramfs.img"), SystemImage: filepath.Join(artifacts, "system.sqfs"), Log: log})
	if s != nil {
		defer func() {
			if err := lab.Down(dir, false, log); err != nil {
				fmt.Fprintln(os.Stderr, "lab down:", err)
			}
		}()
	}
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	if err := s.Wait(wctx, nil); err != nil {
		return err
	}
	kubectl := func(stdin string, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bins[payload.Kubectl], append([]string{"--kubeconfig", s.AdminKubeconfig()}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out)), nil
	}
	if err := s.ImportImages(ctx, bins[payload.Ctr], archive); err != nil {
		return err
	}
	manifest := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 10
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      tolerations: [{operator: Exists}]
      containers:
      - {name: netexec, image: %[1]q, imagePullPolicy: Never, args: [netexec, --http-port=8080]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: worker-1
  containers:
  - {name: pause, image: %[1]q, imagePullPolicy: Never, args: [pause]}
`, images[0])
	if _, err := kubectl(manifest, "apply", "-f", "-"); err != nil {
		return err
	}
	if _, err := kubectl("", "rollout", "status", "deployment/web", "--timeout=5m"); err != nil {
		return err
	}
	if _, err := kubectl("", "wait", "--for=condition=Ready", "pod/client", "--timeout=3m"); err != nil {
		return err
	}
	clusterIP, err := kubectl("", "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		return err
	}
	ips, err := kubectl("", "get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}")
	if err != nil {
		return err
	}
	var direct []string
	for _, ip := range strings.Fields(ips) {
		direct = append(direct, net.JoinHostPort(ip, "8080"))
	}
	clientIP, err := kubectl("", "get", "pod", "client", "-o", "jsonpath={.status.podIP}")
	if err != nil {
		return err
	}
	pid, err := lab.PodPID(clientIP)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	loadIn := func(targets []string) (result, error) {
		out, err := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(pid), "-n", self,
			"-load", strings.Join(targets, ","), "-seconds", fmt.Sprint(d.Seconds())).Output()
		var r result
		if err == nil {
			err = json.Unmarshal(out, &r)
		}
		return r, err
	}
	var viaService, viaPod []result
	for range runs {
		r, err := loadIn([]string{net.JoinHostPort(clusterIP, "80")})
		if err != nil {
			return err
		}
		viaService = append(viaService, r)
		if r, err = loadIn(direct); err != nil {
			return err
		}
		viaPod = append(viaPod, r)
	}
	fmt.Printf("pod → 10 endpoints (agnhost netexec on 1 control plane + 2 workers), sequential HTTP GET on a new TCP connection each, %d alternating runs of %s\n", runs, d)
	for _, row := range []struct {
		name string
		rs   []result
	}{{"ClusterIP (kube-proxy nftables)", viaService}, {"pod IPs directly", viaPod}} {
		rate, p50, p99, errs := summarize(row.rs)
		fmt.Printf("  %-32s median %7.0f req/s   p50 %6.0f µs   p99 %6.0f µs   errors %d\n", row.name, rate, p50, p99, errs)
	}
	rs, _, _, _ := summarize(viaService)
	rp, _, _, _ := summarize(viaPod)
	fmt.Printf("  ClusterIP / direct request rate: %.3fx\n", rs/rp)
	return nil
}

func summarize(rs []result) (rate, p50, p99 float64, errs int) {
	var rates, p50s, p99s []float64
	for _, r := range rs {
		rates = append(rates, float64(r.Requests)/r.Seconds)
		p50s, p99s = append(p50s, r.P50us), append(p99s, r.P99us)
		errs += r.Errors
	}
	return stats.Median(rates), stats.Median(p50s), stats.Median(p99s), errs
}
