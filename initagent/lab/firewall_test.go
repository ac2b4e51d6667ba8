package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"
)

// firewallScan checks the nodes' inbound firewall from the lab host, which
// is outside the cluster: on every node, every TCP port something listens
// on answers only if the firewall opens it to this host (the apiserver,
// the node API, NodePorts, and etcd's client port by the lab's declared
// rule), and every other listening port and a sample of closed TCP and UDP
// ports (outside the NodePort range, which is open) is dropped: no
// connection, no reset, no ICMP unreachable.
func (h *haCluster) firewallScan(nodePort int) {
	gateway := netip.MustParseAddr(h.s.Gateway)
	for _, n := range h.s.Nodes {
		open := map[int]bool{50000: true, nodePort: true}
		if n.Role == RoleControlPlane {
			open[6443], open[2379] = true, true
		}
		listening := h.listeningTCP(n)
		ports := slices.Clone(listening)
		for p := range open {
			if !slices.Contains(ports, p) {
				ports = append(ports, p)
			}
		}
		ports = append(ports, 22, 80, 443, 8080, 9999) // closed: dropped, not refused
		slices.Sort(ports)
		ports = slices.Compact(ports)
		addr := netip.MustParseAddr(n.Address)
		errs := make([]error, len(ports))
		var wg sync.WaitGroup
		for i, p := range ports {
			wg.Go(func() { errs[i] = dialTCP(netip.AddrPortFrom(addr, uint16(p))) })
		}
		wg.Wait()
		var answered, dropped []string
		for i, p := range ports {
			err := errs[i]
			switch {
			case err == nil:
				answered = append(answered, strconv.Itoa(p))
				if !open[p] {
					h.t.Errorf("firewall: %s tcp %d answers the lab host, but nothing opens it", n.Name, p)
				}
			case errors.Is(err, syscall.ECONNREFUSED):
				h.t.Errorf("firewall: %s tcp %d refused the connection: the firewall should drop, not reset", n.Name, p)
			default:
				dropped = append(dropped, strconv.Itoa(p))
				if open[p] && slices.Contains(listening, p) {
					h.t.Errorf("firewall: %s tcp %d is open to the lab host but does not answer: %v", n.Name, p, err)
				}
			}
		}
		for _, p := range []int{53, 123, 161, 4789, 8472, 20053} {
			if err := udpRefused(netip.AddrPortFrom(addr, uint16(p))); err != nil {
				h.t.Errorf("firewall: %s udp %d: %v", n.Name, p, err)
			}
		}
		h.t.Logf("firewall %s from %s: tcp answered %s; dropped %s (listening: %v)", n.Name, gateway,
			strings.Join(answered, ","), strings.Join(dropped, ","), listening)
	}
}

// listeningTCP lists the TCP ports n listens on at an address the lab host
// can reach (any, or its lab address).
func (h *haCluster) listeningTCP(n Node) []int {
	out, err := exec.Command("ip", "netns", "exec", n.Netns, "ss", "-Htln").Output()
	if err != nil {
		h.t.Fatalf("ss in %s: %v", n.Name, err)
	}
	var ports []int
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		local := f[3]
		i := strings.LastIndex(local, ":")
		host, port := strings.Trim(local[:i], "[]"), local[i+1:]
		if host != "*" && host != "0.0.0.0" && host != "::" && host != n.Address {
			continue
		}
		if p, err := strconv.Atoi(port); err == nil && !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports
}

func dialTCP(to netip.AddrPort) error {
	c, err := net.DialTimeout("tcp", to.String(), 1500*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err
}

// udpRefused sends a datagram and returns an error when an ICMP port
// unreachable comes back (the port is closed but not firewalled) or
// anything answers.
func udpRefused(to netip.AddrPort) error {
	c, err := net.Dial("udp", to.String())
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 16)
	for range 2 {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("scan")); err != nil {
			return fmt.Errorf("send: %v", err)
		}
		_, err := c.Read(buf)
		switch {
		case err == nil:
			return errors.New("answered: the firewall should drop it")
		case errors.Is(err, syscall.ECONNREFUSED):
			return errors.New("ICMP port unreachable came back: the firewall should drop it silently")
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return err
		}
	}
	return nil
}

// vrrpFromStranger sends VRRP adverts from the lab host, which is no peer,
// to every control plane: the firewall drops them before the VIP speaker,
// whose counters of refused adverts (wrong source, TTL, checksum, version)
// do not move, while it keeps receiving its peers' adverts.
func (h *haCluster) vrrpFromStranger() {
	conn, err := net.ListenPacket("ip4:112", h.s.Gateway)
	if err != nil {
		h.t.Fatalf("raw VRRP socket: %v", err)
	}
	defer conn.Close()
	// A VRRPv3 advert for the lab's API router: version 3, type 1, VRID 96
	// (the lab's), priority 255, one address: the API VIP.
	vip := netip.MustParseAddr(h.s.APIVIP).As4()
	advert := append([]byte{0x31, 96, 255, 1, 0, 100, 0, 0}, vip[:]...)
	holder := h.vipHolder() // sends adverts; only the backups receive them
	for _, n := range h.s.Nodes {
		if n.Role != RoleControlPlane {
			continue
		}
		before := h.vipCounters(n)
		for range 5 {
			if _, err := conn.WriteTo(advert, &net.IPAddr{IP: net.ParseIP(n.Address)}); err != nil {
				h.t.Fatalf("send VRRP to %s: %v", n.Name, err)
			}
		}
		time.Sleep(time.Second)
		after := h.vipCounters(n)
		if after.dropped != before.dropped {
			h.t.Errorf("firewall: %s's VIP speaker saw VRRP from the lab host (refused-advert counters %.0f → %.0f): the firewall should drop it first",
				n.Name, before.dropped, after.dropped)
		}
		if n.Name != holder.Name && after.received <= before.received {
			h.t.Errorf("%s's VIP speaker received no adverts in a second (%.0f → %.0f): the peers' VRRP does not get through", n.Name, before.received, after.received)
		}
	}
}

type vipCounters struct{ received, dropped float64 }

// vipCounters sums the VIP speaker's adverts received and refused, over
// its routers, from the node's status.
func (h *haCluster) vipCounters(n Node) vipCounters {
	var st map[string]any
	if err := json.Unmarshal(h.nodeStatus(n), &st); err != nil {
		h.t.Fatal(err)
	}
	var c vipCounters
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if f, ok := x.(float64); ok && k == "advertsReceived" {
					c.received += f
				} else if ok && strings.HasPrefix(k, "dropped") {
					c.dropped += f
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(st)
	return c
}

func (h *haCluster) nodeStatus(n Node) []byte {
	client, err := h.s.apiClient()
	if err != nil {
		h.t.Fatal(err)
	}
	client.Timeout = 10 * time.Second
	resp, err := client.Get("https://" + net.JoinHostPort(n.Address, "50000") + "/v1/status")
	if err != nil {
		h.t.Fatalf("status of %s: %v", n.Name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return body
}

// lockoutReverts applies, with a 20 s confirm window, a config whose
// firewall lets only a network the lab host is not in reach worker-1's node
// API: the operator is locked out (new connections dropped), sends no
// confirm, and the node puts the previous config back by itself.
func (h *haCluster) lockoutReverts() {
	worker := h.node("worker-1")
	original, err := os.ReadFile(filepath.Join(h.s.nodeDir(worker), "machine-config.yaml"))
	if err != nil {
		h.t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(original, &cfg); err != nil {
		h.t.Fatal(err)
	}
	fw := cfg["network"].(map[string]any)["firewall"].(map[string]any)
	fw["managementNets"] = []string{"10.255.255.0/24"}
	locked, err := yaml.Marshal(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	client, err := h.s.apiClient()
	if err != nil {
		h.t.Fatal(err)
	}
	client.Timeout = time.Minute
	api := netip.AddrPortFrom(netip.MustParseAddr(worker.Address), 50000)
	start := time.Now()
	resp, err := client.Post("https://"+api.String()+"/v1/apply?confirmWithin=20s", "application/yaml", bytes.NewReader(locked))
	if err != nil {
		h.t.Fatalf("apply --try on worker-1: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("apply --try on worker-1: %s: %s", resp.Status, body)
	}
	if err := dialTCP(api); err == nil {
		h.t.Fatal("firewall: after the lockout config, the lab host still opens connections to worker-1's node API")
	}
	h.eventually("worker-1's node API back after the unconfirmed try", 90*time.Second, func() error {
		if err := dialTCP(api); err != nil {
			return err
		}
		st := string(h.nodeStatus(worker))
		if strings.Contains(st, "10.255.255.0/24") {
			return errors.New("the status still shows the locked-out firewall")
		}
		return nil
	})
	h.t.Logf("figures: lockout applied with confirmWithin=20s → node API reachable again, previous firewall back, after %v",
		time.Since(start).Round(100*time.Millisecond))
}
