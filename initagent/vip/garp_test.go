package vip

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
)

// TestAnnounceUpdatesClient: a client has the VIPs in its neighbour table
// with the old master's MAC; after the master dies, the new master's
// gratuitous ARP and unsolicited NA move the client's entries to the new
// MAC without the client sending a single ARP request or neighbour
// solicitation, and the client reaches the VIPs on the new master.
func TestAnnounceUpdatesClient(t *testing.T) {
	l, old, next, client := clientOfTwoSpeakers(t)

	// From here on the client sends nothing to the VIPs; count what it
	// asks the network on its switch port.
	w := watchResolution(t, l, client)
	old.setLink(t, false)
	old.signal(t, syscall.SIGKILL)
	for _, r := range []string{"api", "api6"} {
		next.waitState(t, r, StateMaster)
	}
	for _, v := range []netip.Prefix{vip4, vip6} {
		var n netlink.Neigh
		waitFor(t, "the client's entry for "+v.Addr().String()+" to move to the new master", func() bool {
			n = clientNeigh(t, client, v.Addr())
			return bytes.Equal(n.HardwareAddr, next.mac)
		})
		if n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) != 0 {
			t.Errorf("client entry for %s is in state %#x (incomplete or failed)", v.Addr(), n.State)
		}
	}
	if q := w.stop(); q > 0 {
		t.Errorf("the client sent %d ARP requests / neighbour solicitations: the entries were not moved by the announcements alone", q)
	}
	for _, v := range []netip.Prefix{vip4, vip6} {
		run(t, "ip", "netns", "exec", client.ns, "ping", "-c", "1", "-W", "5", v.Addr().String())
	}
	for _, r := range []string{"api", "api6"} {
		if st := next.router(t, r); st.Counters.Announcements == 0 {
			t.Errorf("new master %s counted no announcements: %+v", r, st.Counters)
		}
	}
}

// TestSplitBrainReannounce: the master's process stalls (SIGSTOP) for
// longer than the master down interval, as on an overloaded node; the
// backup takes over and announces the VIPs, so a client's entries move to
// it. When the master runs again it asserts itself, the backup steps down,
// and the master, which never removed the VIPs, must move the client back
// by announcing again: the client sends nothing (no ARP request, no
// solicitation) and still ends up on the master. Without that the client
// keeps sending to a node that no longer holds the VIPs (connections
// reset, then "no route to host" once its entry fails).
func TestSplitBrainReannounce(t *testing.T) {
	l, master, backup, client := clientOfTwoSpeakers(t)

	// Past the takeover's repeated announcement: the master's next one is
	// the periodic one a minute later.
	for _, r := range []string{"api", "api6"} {
		waitFor(t, "the master's second announcement of "+r, func() bool { return master.router(t, r).Counters.Announcements >= 2 })
	}
	w := watchResolution(t, l, client)
	if err := master.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			master.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	for _, r := range []string{"api", "api6"} {
		backup.waitState(t, r, StateMaster)
	}
	for _, v := range []netip.Prefix{vip4, vip6} {
		waitFor(t, "the backup's takeover to move the client's entry for "+v.Addr().String(), func() bool {
			return bytes.Equal(clientNeigh(t, client, v.Addr()).HardwareAddr, backup.mac)
		})
	}
	if err := master.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	for _, r := range []string{"api", "api6"} {
		backup.waitState(t, r, StateBackup)
		if st := master.router(t, r); st.State != StateMaster || st.Counters.LowerPriorityMasters == 0 {
			t.Errorf("master %s: state %s, %d lower-priority master adverts counted, want master and > 0", r, st.State, st.Counters.LowerPriorityMasters)
		}
	}
	for _, v := range []netip.Prefix{vip4, vip6} {
		waitFor(t, "the master's announcements to move the client's entry for "+v.Addr().String()+" back", func() bool {
			return bytes.Equal(clientNeigh(t, client, v.Addr()).HardwareAddr, master.mac)
		})
	}
	if q := w.stop(); q > 0 {
		t.Errorf("the client sent %d ARP requests / neighbour solicitations: the entries were not moved back by announcements alone", q)
	}
	for _, v := range []netip.Prefix{vip4, vip6} {
		run(t, "ip", "netns", "exec", client.ns, "ping", "-c", "1", "-W", "5", v.Addr().String())
		if h := l.holders(t, v); len(h) != 1 || h[0] != 0 {
			t.Errorf("%s is held by %v after the split brain, want [0]", v, h)
		}
	}
}

// clientOfTwoSpeakers starts speakers for vip4 and vip6 on node0 (master)
// and node1 (backup) and has node2, the client, reach both VIPs, so its
// neighbour table holds them with the master's MAC.
func clientOfTwoSpeakers(t *testing.T) (l *lan, master, backup, client *node) {
	t.Helper()
	requireNetTest(t, "ping")
	l = newLAN(t, 3)
	master, backup, client = l.nodes[0], l.nodes[1], l.nodes[2]
	run(t, "ip", "-n", client.ns, "addr", "add", "2001:db8::3/64", "dev", "eth0", "nodad")
	for i, prio := range []uint8{150, 100} {
		l.nodes[i].start(t, speakerSpec{Cluster: "test", Routers: []RouterConfig{api4(l, i, 2, prio, 0), api6(prio, 0)}})
	}
	for _, r := range []string{"api", "api6"} {
		master.waitState(t, r, StateMaster)
		backup.waitState(t, r, StateBackup)
	}
	for _, v := range []netip.Prefix{vip4, vip6} {
		run(t, "ip", "netns", "exec", client.ns, "ping", "-c", "2", "-i", "0.2", "-W", "5", v.Addr().String())
		if n := clientNeigh(t, client, v.Addr()); !bytes.Equal(n.HardwareAddr, master.mac) {
			t.Fatalf("client resolves %s to %s, want the master's %s", v.Addr(), n.HardwareAddr, master.mac)
		}
	}
	return l, master, backup, client
}

func clientNeigh(t *testing.T, client *node, ip netip.Addr) netlink.Neigh {
	t.Helper()
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	ns, err := client.nl.NeighList(client.link.Attrs().Index, fam)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if a, _ := netip.AddrFromSlice(n.IP); a.Unmap() == ip {
			return n
		}
	}
	t.Fatalf("client has no neighbour entry for %s", ip)
	return netlink.Neigh{}
}

// resolutionWatch counts ARP requests and IPv6 neighbour solicitations a
// node sends, seen on its switch port.
type resolutionWatch struct {
	c       *packet.Conn
	wg      sync.WaitGroup
	queries atomic.Int64
}

func watchResolution(t *testing.T, l *lan, nd *node) *resolutionWatch {
	t.Helper()
	w := &resolutionWatch{}
	inNS(t, l.sw, func() {
		ifi, err := net.InterfaceByName(fmt.Sprintf("p%d", nd.i))
		if err == nil {
			w.c, err = packet.Listen(ifi, packet.Raw, 0x0003 /* ETH_P_ALL */, nil)
		}
		if err != nil {
			t.Errorf("watch port of node%d: %v", nd.i, err)
		}
	})
	if w.c == nil {
		t.FailNow()
	}
	w.wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := w.c.ReadFrom(buf)
			if err != nil {
				return
			}
			if isResolution(buf[:n], nd.mac) {
				w.queries.Add(1)
			}
		}
	})
	t.Cleanup(func() { w.stop() })
	return w
}

func (w *resolutionWatch) stop() int64 {
	w.c.Close()
	w.wg.Wait()
	return w.queries.Load()
}

// isResolution reports whether frame is an ARP request or an ICMPv6
// neighbour solicitation sent by mac.
func isResolution(frame []byte, mac net.HardwareAddr) bool {
	if len(frame) < 14 || !bytes.Equal(frame[6:12], mac) {
		return false
	}
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0806:
		return len(frame) >= 22 && binary.BigEndian.Uint16(frame[20:]) == 1
	case 0x86dd:
		// Next header ICMPv6 (no extension headers in NDP), type 135.
		return len(frame) >= 55 && frame[20] == 58 && frame[54] == 135
	}
	return false
}
