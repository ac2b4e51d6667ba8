// Command firewall measures the host firewall (initagent/netfilter) with
// 1,000 declared openings: the time to apply the whole ruleset, against the
// nft CLI loading the same rules from a file (how nftables.service and
// firewalld apply theirs), alternating; and what the rules cost the
// packets: TCP request/response rate on one connection and new-connection
// rate through a veth between two network namespaces, with the firewall
// and without, alternating. The port the clients use is opened by the last
// rule, so every new connection walks the whole list. Root only.
//
//	go run ./tools/bench/firewall [-rules 1000] [-runs 5] [-seconds 3]
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ballast-os/ballast/initagent/netfilter"
	"github.com/ballast-os/ballast/tools/bench/internal/stats"
)

const (
	clientAddr   = "10.77.0.1"
	nodeAddr     = "10.77.0.2"
	port         = 9000
	nodeEndpoint = "10.77.0.2:9000"
)

func main() {
	rules := flag.Int("rules", 1000, "declared openings")
	runs := flag.Int("runs", 5, "alternating runs of each measurement")
	seconds := flag.Float64("seconds", 3, "length of each data-path run")
	flag.Parse()
	if os.Geteuid() != 0 {
		fail(errors.New("needs root (network namespaces, nftables)"))
	}
	id := fmt.Sprint(os.Getpid() % 100000)
	cli, node := "bfwc"+id, "bfwn"+id
	defer func() {
		_ = exec.Command("ip", "netns", "del", cli).Run()
		_ = exec.Command("ip", "netns", "del", node).Run()
	}()
	for _, args := range [][]string{
		{"netns", "add", cli}, {"netns", "add", node},
		{"-n", cli, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", node},
		{"-n", cli, "addr", "add", clientAddr + "/24", "dev", "v0"}, {"-n", node, "addr", "add", nodeAddr + "/24", "dev", "v1"},
		{"-n", cli, "link", "set", "v0", "up"}, {"-n", node, "link", "set", "v1", "up"},
		{"-n", cli, "link", "set", "lo", "up"}, {"-n", node, "link", "set", "lo", "up"},
		// The connection-rate loop closes first: let it reuse its TIME_WAIT ports.
		{"netns", "exec", cli, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			fail(fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out))
		}
	}
	nodeNS, err := netns.GetFromName(node)
	if err != nil {
		fail(err)
	}
	conn, err := netfilter.New(int(nodeNS))
	if err != nil {
		fail(err)
	}
	fw := firewall(*rules)
	peerFile, err := writeNftFile(fw)
	if err != nil {
		fail(err)
	}
	defer os.Remove(peerFile)

	// Apply time: ballast (netlink batch) and nft -f, alternating, each
	// replacing its table that the previous run left.
	var ballastApply, nftApply []time.Duration
	for range *runs * 2 {
		t := time.Now()
		if err := netfilter.Apply(conn, netfilter.Ruleset{Firewall: fw}); err != nil {
			fail(err)
		}
		ballastApply = append(ballastApply, time.Since(t))
		t = time.Now()
		if out, err := exec.Command("ip", "netns", "exec", node, "nft", "-f", peerFile).CombinedOutput(); err != nil {
			fail(fmt.Errorf("nft -f: %v: %s", err, out))
		}
		nftApply = append(nftApply, time.Since(t))
	}
	if out, err := exec.Command("ip", "netns", "exec", node, "nft", "delete", "table", "inet", "peer").CombinedOutput(); err != nil {
		fail(fmt.Errorf("nft delete table: %v: %s", err, out))
	}

	serve(node)
	d := time.Duration(*seconds * float64(time.Second))
	var rrOn, rrOff, cpsOn, cpsOff []float64
	for range *runs {
		for _, on := range []bool{true, false} {
			rs := netfilter.Ruleset{}
			if on {
				rs.Firewall = fw
			}
			if err := netfilter.Apply(conn, rs); err != nil {
				fail(err)
			}
			rr, cps := requestResponse(cli, d), connections(cli, d)
			if on {
				rrOn, cpsOn = append(rrOn, rr), append(cpsOn, cps)
			} else {
				rrOff, cpsOff = append(rrOff, rr), append(cpsOff, cps)
			}
		}
	}
	_ = netfilter.Remove(conn)

	fmt.Printf("host firewall, %d declared openings after the base rules (replies, loopback, ICMP), %d alternating runs, kernel %s\n",
		*rules, *runs, kernelRelease())
	fmt.Printf("  apply the whole ruleset:   ballast (netlink batch) median %7.1f ms   nft -f (same rules) median %7.1f ms   ratio %.2fx\n",
		ms(stats.Median(ballastApply)), ms(stats.Median(nftApply)), float64(stats.Median(nftApply))/float64(stats.Median(ballastApply)))
	fmt.Printf("  TCP request/response, 1 connection: without %8.0f/s   with %8.0f/s   (%.3fx)\n", stats.Median(rrOff), stats.Median(rrOn), stats.Median(rrOn)/stats.Median(rrOff))
	fmt.Printf("  new TCP connections (walk all rules): without %6.0f/s   with %6.0f/s   (%.3fx)\n", stats.Median(cpsOff), stats.Median(cpsOn), stats.Median(cpsOn)/stats.Median(cpsOff))
}

// firewall is n declared openings, one port from one /32 each, with the
// benchmark's port opened by the last one.
func firewall(n int) *netfilter.Firewall {
	fw := &netfilter.Firewall{}
	for i := range n - 1 {
		from := netip.AddrFrom4([4]byte{10, 100, byte(i / 250), byte(i%250 + 1)})
		fw.Openings = append(fw.Openings, netfilter.Opening{Name: fmt.Sprintf("rule-%d", i), Protocol: netfilter.TCP,
			Ports: []netfilter.PortRange{{First: uint16(10000 + i)}}, From: []netip.Prefix{netip.PrefixFrom(from, 32)}})
	}
	return &netfilter.Firewall{Openings: append(fw.Openings, netfilter.Opening{Name: "bench", Protocol: netfilter.TCP,
		Ports: []netfilter.PortRange{{First: port}}, From: []netip.Prefix{netip.MustParsePrefix(clientAddr + "/32")}})}
}

// writeNftFile writes the same filter as nft's language: the same base
// rules, then one rule per opening.
func writeNftFile(fw *netfilter.Firewall) (string, error) {
	var b strings.Builder
	b.WriteString("table inet peer\ndelete table inet peer\ntable inet peer {\n chain input {\n  type filter hook input priority filter; policy drop;\n")
	b.WriteString("  ct state established,related counter accept\n  ct state invalid counter drop\n  iifname \"lo\" counter accept\n")
	b.WriteString("  meta l4proto icmp icmp type { destination-unreachable, echo-request, time-exceeded, parameter-problem } counter accept\n")
	b.WriteString("  meta l4proto ipv6-icmp icmpv6 type { 1, 2, 3, 4, 128, 130, 131, 132, 133, 134, 135, 136, 137, 143 } counter accept\n")
	for _, o := range fw.Openings {
		fmt.Fprintf(&b, "  ip saddr %s tcp dport %d counter accept comment %q\n", o.From[0], o.Ports[0].First, o.Name)
	}
	b.WriteString(" }\n}\n")
	f, err := os.CreateTemp("", "bench-firewall-*.nft")
	if err != nil {
		return "", err
	}
	defer f.Close()
	_, err = f.WriteString(b.String())
	return f.Name(), err
}

// inNS runs fn on a thread in the named namespace; sockets made there stay there.
func inNS(name string, fn func()) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		fail(err)
	}
	defer ns.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends with the goroutine, never back in service
		if err := netns.Set(ns); err != nil {
			fail(err)
		}
		fn()
	}()
	<-done
}

// serve echoes on nodeAddr:port in the node namespace.
func serve(node string) {
	var ln net.Listener
	var err error
	inNS(node, func() { ln, err = net.Listen("tcp", nodeEndpoint) })
	if err != nil {
		fail(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// requestResponse is one-byte ping-pongs per second on one connection.
func requestResponse(cli string, d time.Duration) float64 {
	var n int
	inNS(cli, func() {
		c, err := net.Dial("tcp", nodeEndpoint)
		if err != nil {
			fail(err)
		}
		defer c.Close()
		buf := []byte{0}
		start := time.Now()
		for time.Since(start) < d {
			if _, err := c.Write(buf); err != nil {
				fail(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				fail(err)
			}
			n++
		}
		d = time.Since(start)
	})
	return float64(n) / d.Seconds()
}

// connections is connect, one byte each way, close, per second.
func connections(cli string, d time.Duration) float64 {
	var n int
	inNS(cli, func() {
		buf := []byte{0}
		start := time.Now()
		for time.Since(start) < d {
			c, err := net.Dial("tcp", nodeEndpoint)
			if err != nil {
				fail(err)
			}
			if _, err := c.Write(buf); err == nil {
				_, _ = io.ReadFull(c, buf)
			}
			c.Close()
			n++
		}
		d = time.Since(start)
	})
	return float64(n) / d.Seconds()
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func kernelRelease() string {
	data, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(data))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench/firewall:", err)
	os.Exit(1)
}
