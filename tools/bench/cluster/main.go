// Command cluster measures the lab cluster of container nodes (issue 19):
//
//   - `lab up` with 3 control planes and 1 worker: time to each node's
//     milestones (network committed, containerd ready, kubelet started, etcd
//     member, apiserver ready, Ready), the first apiserver, etcd with three
//     voting members (all control planes report "member"), the last node
//     Ready;
//   - the API outage a client sees that asks https://VIP:6443/readyz every
//     10 ms (a new connection each time, 1 s timeout) while the VIP holder
//     has a power cut (lab stop: link and every process at once): the
//     longest gap between two answers with status 200, per trial; after each
//     trial the surviving nodes must still be Ready; then the node is started
//     again and the next trial waits until all four are Ready;
//   - memory per node at Ready: the node cgroup's total_rss (and usage with
//     page cache).
//
// It runs on this machine as root, from imgbuild's artifacts:
//
//	go run ./tools/bench/cluster [-artifacts out/control-plane] [-trials 5]
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ballast-os/ballast/initagent/lab"
	"github.com/ballast-os/ballast/initagent/runtime"
)

func main() {
	artifacts := flag.String("artifacts", "out/control-plane", "imgbuild output with initramfs.img and system.sqfs")
	trials := flag.Int("trials", 5, "VIP holder power cuts")
	keep := flag.Bool("keep", false, "leave the lab up afterwards")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *artifacts, *trials, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "bench cluster:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, artifacts string, trials int, keep bool) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dir, err := os.MkdirTemp("", "ballast-bench-cluster-")
	if err != nil {
		return err
	}
	dir = filepath.Join(dir, "lab")
	start := time.Now()
	s, err := lab.Up(ctx, lab.Options{Name: "bench", Dir: dir, Provisioner: lab.ProvisionerContainer, ControlPlanes: 3, Workers: 1,
		Initramfs: filepath.Join(artifacts, "initramfs.img"), SystemImage: filepath.Join(artifacts, "system.sqfs"), Log: log})
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
	// Milestones: the first time each node reports each progress.
	reached := map[string]map[string]time.Duration{}
	var firstAPIServer, etcdThree time.Duration
	wctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	err = s.Wait(wctx, func(st []lab.NodeStatus) {
		now := time.Since(start)
		members := 0
		for _, n := range st {
			if reached[n.Name] == nil {
				reached[n.Name] = map[string]time.Duration{}
			}
			for _, p := range milestones {
				if n.Role != lab.RoleControlPlane && (p == lab.ProgressEtcd || p == lab.ProgressAPIServer) {
					continue
				}
				if atOrBeyond(n.Progress, p) {
					if _, ok := reached[n.Name][p]; !ok {
						reached[n.Name][p] = now
					}
				}
			}
			if n.Role == lab.RoleControlPlane && atOrBeyond(n.Progress, lab.ProgressAPIServer) && firstAPIServer == 0 {
				firstAPIServer = now
			}
			if n.Etcd == "member" || n.Etcd == "bootstrapped" {
				members++
			}
		}
		if members == 3 && etcdThree == 0 {
			etcdThree = now
		}
	})
	if err != nil {
		return err
	}
	allReady := time.Since(start)
	fmt.Printf("lab up 3 control planes + 1 worker → all Ready: %s\n", allReady.Round(100*time.Millisecond))
	fmt.Printf("  first apiserver ready %s, etcd with 3 voting members %s (status polled every 2 s)\n",
		firstAPIServer.Round(100*time.Millisecond), etcdThree.Round(100*time.Millisecond))
	fmt.Printf("  %-9s", "node")
	for _, p := range milestones {
		fmt.Printf(" %17s", p)
	}
	fmt.Println()
	for _, n := range s.Nodes {
		fmt.Printf("  %-9s", n.Name)
		for _, p := range milestones {
			if d, ok := reached[n.Name][p]; ok {
				fmt.Printf(" %17s", d.Round(time.Second))
			} else {
				fmt.Printf(" %17s", "-")
			}
		}
		fmt.Println()
	}
	fmt.Println("memory per node at Ready (node cgroup):")
	for _, n := range s.Nodes {
		dir := filepath.Join("/sys/fs/cgroup/memory", s.CgroupParent, n.Name)
		fmt.Printf("  %-9s %-13s rss %4d MiB, with page cache %5d MiB\n", n.Name, n.Role,
			memStat(filepath.Join(dir, "memory.stat"), "total_rss")>>20, readInt(filepath.Join(dir, "memory.usage_in_bytes"))>>20)
	}

	kc, err := runtime.LoadKubeconfig(s.AdminKubeconfig(), "")
	if err != nil {
		return err
	}
	var outages []time.Duration
	for i := 1; i <= trials; i++ {
		out, holder, notReady, err := trial(ctx, s, kc)
		if err != nil {
			return fmt.Errorf("trial %d: %w", i, err)
		}
		outages = append(outages, out)
		fmt.Printf("trial %d: power cut of VIP holder %s → /readyz through the VIP answered again after %s; surviving nodes NotReady: %v\n",
			i, holder, out.Round(time.Millisecond), notReady)
	}
	slices.Sort(outages)
	fmt.Printf("API outage seen every 10 ms through the VIP, %d trials: median %s, worst %s\n",
		len(outages), outages[len(outages)/2].Round(time.Millisecond), outages[len(outages)-1].Round(time.Millisecond))
	return nil
}

var milestones = []string{lab.ProgressNetwork, lab.ProgressContainerd, lab.ProgressKubelet, lab.ProgressEtcd, lab.ProgressAPIServer, lab.ProgressReady}

// atOrBeyond reports whether progress p is milestone m or a later one.
func atOrBeyond(p, m string) bool {
	return slices.Index(milestones, p) >= slices.Index(milestones, m) && slices.Index(milestones, m) >= 0
}

// trial cuts the VIP holder's power while a client asks the VIP for
// /readyz every 10 ms, and returns the longest gap between answers.
func trial(ctx context.Context, s *lab.State, kc *runtime.KubeClient) (time.Duration, string, []string, error) {
	holder, err := vipHolder(s)
	if err != nil {
		return 0, "", nil, err
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(s.Dir, "pki", "kubernetes-ca.crt"))
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		return 0, "", nil, fmt.Errorf("cluster CA: %v", err)
	}
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	url := "https://" + s.APIVIP + ":6443/readyz"
	ask := func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	type sample struct {
		at time.Time // when the ask started
		ok bool
	}
	samples := make(chan sample, 1<<16)
	pctx, stopProbe := context.WithCancel(ctx)
	var asks sync.WaitGroup
	probing := make(chan struct{})
	go func() {
		defer close(probing)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-tick.C:
				asks.Go(func() { // every 10 ms, even while earlier asks hang
					t := time.Now()
					samples <- sample{t, ask()}
				})
			}
		}
	}()
	endProbe := func() []sample {
		stopProbe()
		<-probing
		asks.Wait()
		close(samples)
		var all []sample
		for smp := range samples {
			all = append(all, smp)
		}
		return all
	}
	time.Sleep(2 * time.Second) // steady answers before the cut
	cut := time.Now()
	if err := s.Stop(holder); err != nil {
		endProbe()
		return 0, "", nil, err
	}
	// Sample until 3 s of answers followed the last failure (at least 10 s
	// after the cut), or give up 2 min after the cut.
	var got []sample
	var lastFail time.Time
	for {
		smp := <-samples
		got = append(got, smp)
		if !smp.ok {
			lastFail = maxTime(lastFail, smp.at)
		}
		now := time.Now()
		if now.Sub(cut) > 10*time.Second && now.Sub(lastFail) > 3*time.Second+time.Second {
			break
		}
		if now.Sub(cut) > 2*time.Minute {
			endProbe()
			return 0, holder.Name, nil, errors.New("the API did not answer through the VIP within 2 minutes of the cut")
		}
	}
	got = append(got, endProbe()...)
	// The outage: the longest time between two asks that were answered.
	slices.SortFunc(got, func(a, b sample) int { return a.at.Compare(b.at) })
	var longest time.Duration
	var prevOK time.Time
	for _, smp := range got {
		if !smp.ok {
			continue
		}
		if !prevOK.IsZero() {
			longest = max(longest, smp.at.Sub(prevOK))
		}
		prevOK = smp.at
	}
	// The surviving nodes stay Ready.
	var notReady []string
	for _, n := range s.Nodes {
		if n.Name == holder.Name {
			continue
		}
		node, err := kc.GetNode(ctx, n.Name)
		if err != nil {
			return 0, holder.Name, nil, err
		}
		if ok, _ := node.Ready(); !ok {
			notReady = append(notReady, n.Name)
		}
	}
	if err := s.Start(holder); err != nil {
		return 0, holder.Name, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := s.Wait(wctx, nil); err != nil {
		return 0, holder.Name, nil, err
	}
	return longest, holder.Name, notReady, nil
}

func vipHolder(s *lab.State) (lab.Node, error) {
	for range 60 {
		var holders []lab.Node
		for _, n := range s.Nodes {
			out, err := exec.Command("ip", "-n", n.Netns, "-o", "addr", "show", "dev", "eth0").Output()
			if err == nil && strings.Contains(string(out), " "+s.APIVIP+"/") {
				holders = append(holders, n)
			}
		}
		if len(holders) == 1 {
			return holders[0], nil
		}
		time.Sleep(time.Second)
	}
	return lab.Node{}, errors.New("no single VIP holder")
}

func readInt(path string) int64 {
	data, _ := os.ReadFile(path)
	v, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return v
}

func memStat(path, key string) int64 {
	data, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
