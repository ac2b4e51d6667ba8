// Command netboot measures netbootd's artifact serving side by side with
// nginx on the same files in the same run: N concurrent clients each
// download the initramfs over a fresh connection (as a rack of PXE-booting
// machines does); it reports aggregate throughput and completion times.
//
//	go run ./tools/bench/netboot [-clients 200] [-rounds 5] [-size 6] [-artifacts DIR]
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/ballast-os/ballast/netboot/server"
	"github.com/ballast-os/ballast/tools/bench/internal/stats"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/netboot:", err)
		os.Exit(1)
	}
}

func run() error {
	clients := flag.Int("clients", 200, "concurrent downloads per round")
	rounds := flag.Int("rounds", 5, "rounds per server (interleaved)")
	sizeMiB := flag.Int("size", 6, "size of the generated initramfs in MiB (when -artifacts is not given)")
	artifacts := flag.String("artifacts", "", "imgbuild output directory to serve (default: a generated initramfs.img)")
	nginxBin := flag.String("nginx", "/usr/sbin/nginx", "nginx binary (Debian nginx-light)")
	flag.Parse()

	tmp, err := os.MkdirTemp("", "ballast-bench-netboot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// nginx's workers drop to an unprivileged user: they must be able to read the files.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	dir := *artifacts
	if dir == "" {
		dir = filepath.Join(tmp, "artifacts")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		data := make([]byte, *sizeMiB<<20)
		rand.Read(data)
		if err := os.WriteFile(filepath.Join(dir, "initramfs.img"), data, 0o644); err != nil {
			return err
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "initramfs.img"))
	if err != nil {
		return fmt.Errorf("%w: -artifacts must hold initramfs.img", err)
	}

	// netbootd, in process, logging every request as it does in production (to nowhere).
	srv, err := server.New(server.Config{ArtifactsDir: dir, HTTPAddr: "127.0.0.1:0",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()

	nginxAddr, stopNginx, err := startNginx(*nginxBin, tmp, dir)
	if err != nil {
		return err
	}
	defer stopNginx()

	targets := []struct{ name, url string }{
		{"netbootd", "http://" + srv.HTTPAddr().String() + "/artifacts/initramfs.img"},
		{"nginx", "http://" + nginxAddr + "/initramfs.img"},
	}
	for _, t := range targets { // warm-up: page cache, sha256 cache
		if _, err := round(t.url, 4, fi.Size()); err != nil {
			return fmt.Errorf("%s warm-up: %w", t.name, err)
		}
	}
	type result struct {
		throughput []float64       // MiB/s per round
		times      []time.Duration // every download
	}
	results := make([]result, len(targets))
	for r := 0; r < *rounds; r++ {
		for i, t := range targets {
			rr, err := round(t.url, *clients, fi.Size())
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			results[i].throughput = append(results[i].throughput, rr.mibps)
			results[i].times = append(results[i].times, rr.times...)
		}
	}

	fmt.Printf("%d clients × %.1f MiB initramfs, %d rounds each (interleaved), fresh connection per download, loopback, GOMAXPROCS=%d\n\n",
		*clients, float64(fi.Size())/(1<<20), *rounds, maxprocs())
	fmt.Printf("%-9s %14s %14s %14s %10s %10s %10s\n", "server", "MiB/s median", "MiB/s min", "MiB/s max", "p50", "p99", "max")
	for i, t := range targets {
		th := slices.Clone(results[i].throughput)
		slices.Sort(th)
		ts := results[i].times
		slices.Sort(ts)
		fmt.Printf("%-9s %14.0f %14.0f %14.0f %10s %10s %10s\n", t.name, th[len(th)/2], th[0], th[len(th)-1],
			pct(ts, 50), pct(ts, 99), ts[len(ts)-1].Round(time.Millisecond))
	}
	nb, ng := stats.Median(results[0].throughput), stats.Median(results[1].throughput)
	fmt.Printf("\nnetbootd / nginx throughput (medians): %.2f×  (target ≥ 0.8×)\n", nb/ng)
	return nil
}

type roundResult struct {
	mibps float64
	times []time.Duration
}

// round starts n downloads at once and waits for all of them.
func round(url string, n int, size int64) (roundResult, error) {
	tr := &http.Transport{DisableKeepAlives: true, DisableCompression: true, DialContext: (&net.Dialer{Timeout: 30 * time.Second}).DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Minute}
	var wg sync.WaitGroup
	start := make(chan struct{})
	times := make([]time.Duration, n)
	errs := make([]error, n)
	var t0 time.Time
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			begin := time.Now()
			resp, err := client.Get(url)
			if err != nil {
				errs[i] = err
				return
			}
			got, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && (resp.StatusCode != 200 || got != size) {
				err = fmt.Errorf("%s: %d bytes of %d", resp.Status, got, size)
			}
			errs[i] = err
			times[i] = time.Since(begin)
		}()
	}
	t0 = time.Now()
	close(start)
	wg.Wait()
	wall := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return roundResult{}, err
	}
	return roundResult{mibps: float64(int64(n)*size) / (1 << 20) / wall.Seconds(), times: times}, nil
}

func startNginx(bin, tmp, root string) (string, func(), error) {
	if _, err := os.Stat(bin); err != nil {
		return "", nil, fmt.Errorf("%s not found: apt-get install -y nginx-light", bin)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	nd := filepath.Join(tmp, "nginx")
	if err := os.MkdirAll(nd, 0o755); err != nil {
		return "", nil, err
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    server {
        listen %[2]s;
        root %[3]s;
    }
}
`, nd, addr, root)
	confPath := filepath.Join(nd, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "-c", confPath, "-p", nd, "-e", filepath.Join(nd, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			b, _ := os.ReadFile(filepath.Join(nd, "error.log"))
			return "", nil, fmt.Errorf("nginx did not start listening on %s: %s", addr, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)].Round(time.Millisecond)
}

func maxprocs() int { return runtime.GOMAXPROCS(0) }
