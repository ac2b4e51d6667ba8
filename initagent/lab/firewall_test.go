package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
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
