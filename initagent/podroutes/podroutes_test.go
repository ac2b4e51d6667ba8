package podroutes

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// node is one netns "node" with eth0 on a LAN (the peer end stays in the
// test binary's namespace, up, so eth0 has carrier).
type node struct {
	ns netns.NsHandle
	h  *netlink.Handle
}

var lanPeers atomic.Int32

func newNode(t *testing.T, addrs ...string) node {
	t.Helper()
	ns := newNetns(t)
	self, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { self.Close() })
	peer := fmt.Sprintf("lan%d", lanPeers.Add(1))
	veth(t, ns, "eth0", self, peer)
	sh := handleAt(t, self)
	if l, err := sh.LinkByName(peer); err != nil || sh.LinkSetUp(l) != nil {
		t.Fatalf("set %s up: %v", peer, err)
	}
	t.Cleanup(func() {
		if l, err := sh.LinkByName(peer); err == nil {
			_ = sh.LinkDel(l)
		}
	})
	h := handleAt(t, ns)
	configure(t, h, "eth0", addrs...)
	return node{ns: ns, h: h}
}

// ownRoutes lists the daemon's routes to p (any metric).
func ownRoutes(t *testing.T, h *netlink.Handle, p string) []netlink.Route {
	rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: mustIPNet(p), Protocol: Protocol},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func mustIPNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func formatStatus(st Status) string {
	b, _ := json.MarshalIndent(st, "", "  ")
	return string(b)
}

func (n node) daemon(name string, api *apiServer, log *logRecorder) *Daemon {
	ns := n.ns
	return &Daemon{
		NodeName: name, Netns: &ns, Log: slog.New(log),
		Connect:    func(context.Context) (Nodes, error) { return api.client(), nil },
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	}
}

// TestFollowsNodes: routes for the other nodes' pod CIDRs appear with the
// right gateway and protocol in both families, follow a deleted node and a
// changed address, and an off-link node gets none and one warning.
func TestFollowsNodes(t *testing.T) {
	n := newNode(t, "10.0.0.1/24", "fd00::1/64")
	api := newAPIServer(t)
	api.set("a", []string{"10.0.0.1", "fd00::1"}, "10.244.0.0/24", "fd10:244::/64")
	api.set("b", []string{"10.0.0.2"}, "10.244.1.0/24")
	api.set("c", []string{"10.0.0.3", "fd00::3"}, "10.244.2.0/24", "fd10:244:2::/64")
	log := &logRecorder{}
	d := n.daemon("a", api, log)
	startDaemon(t, d)

	waitFor(t, "route to b's pods", hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.2", Protocol))
	waitFor(t, "route to c's pods", hasRoute(t, n.h, "10.244.2.0/24", "10.0.0.3", Protocol))
	waitFor(t, "IPv6 route to c's pods", hasRoute(t, n.h, "fd10:244:2::/64", "fd00::3", Protocol))
	rs := routes(t, n.h)
	eth0, _ := n.h.LinkByName("eth0")
	for _, p := range []string{"10.244.1.0/24", "10.244.2.0/24", "fd10:244:2::/64"} {
		for q, r := range rs {
			if q.String() == p && (r.LinkIndex != eth0.Attrs().Index || r.MTU != 0 || r.Table != unix.RT_TABLE_MAIN) {
				t.Errorf("route %s: dev %d MTU %d table %d, want dev eth0 (%d), no MTU of its own, main table", p, r.LinkIndex, r.MTU, r.Table, eth0.Attrs().Index)
			}
		}
	}
	for _, own := range []string{"10.244.0.0/24", "fd10:244::/64"} {
		if r, ok := rs[mustPrefix(own)]; ok && int(r.Protocol) == Protocol {
			t.Errorf("the node routes its own pod CIDR %s: %v", own, r)
		}
	}
	wantStatus := []RouteStatus{
		{Node: "b", PodCIDR: "10.244.1.0/24", Via: "10.0.0.2", Dev: "eth0"},
		{Node: "c", PodCIDR: "10.244.2.0/24", Via: "10.0.0.3", Dev: "eth0"},
		{Node: "c", PodCIDR: "fd10:244:2::/64", Via: "fd00::3", Dev: "eth0"},
	}
	if got := d.Status().Routes; !slices.Equal(got, wantStatus) {
		t.Errorf("Status().Routes = %+v\nwant %+v", got, wantStatus)
	}
	waitFor(t, "added logged", log.logged(slog.LevelInfo, "pod route added", "node", "c", "podCIDR", "fd10:244:2::/64", "via", "fd00::3", "dev", "eth0"))

	api.remove("c")
	waitFor(t, "c's IPv4 route gone", noRoute(t, n.h, "10.244.2.0/24"))
	waitFor(t, "c's IPv6 route gone", noRoute(t, n.h, "fd10:244:2::/64"))
	waitFor(t, "removal logged", log.logged(slog.LevelInfo, "pod route removed", "node", "c", "podCIDR", "10.244.2.0/24"))

	api.set("b", []string{"10.0.0.4"}, "10.244.1.0/24")
	waitFor(t, "b's route via its new address", hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.4", Protocol))

	api.set("d", []string{"192.168.7.7"}, "10.244.7.0/24")
	offLink := matchLog(slog.LevelWarn, "pod route skipped", "node", "d", "podCIDR", "10.244.7.0/24")
	waitFor(t, "off-link node logged", func() (bool, string) { n, all := log.count(offLink); return n > 0, all })
	if ok, state := noRoute(t, n.h, "10.244.7.0/24")(); !ok {
		t.Errorf("off-link node d got a route:\n%s", state)
	}
	if _, all := log.count(offLink); !strings.Contains(all, "BGP or an overlay") {
		t.Errorf("the warning does not say what the node needs:\n%s", all)
	}
	// Another change makes the daemon look at d again: still one warning.
	api.set("b", []string{"10.0.0.5"}, "10.244.1.0/24")
	waitFor(t, "b's route via 10.0.0.5", hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.5", Protocol))
	if n, all := log.count(offLink); n != 1 {
		t.Errorf("off-link node logged %d times, want once:\n%s", n, all)
	}
	st := d.Status()
	if !slices.ContainsFunc(st.Skipped, func(s SkipStatus) bool { return s.Node == "d" && strings.Contains(s.Reason, "not on-link") }) {
		t.Errorf("status does not show d skipped as off-link: %+v", st.Skipped)
	}
	if st.LastError != "" || st.RouteError != "" || !st.Watching || st.Nodes != 3 {
		t.Errorf("status: %s", formatStatus(st))
	}
}

// TestRestart: a daemon started over routes a previous run left removes the
// stale ones and corrects a changed gateway; a route of another protocol for
// a node's pod CIDR is never touched; stopping the daemon leaves its routes.
func TestRestart(t *testing.T) {
	n := newNode(t, "10.0.0.1/24")
	eth0, _ := n.h.LinkByName("eth0")
	add := func(p, gw string, proto netlink.RouteProtocol, metric int) {
		r := netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: mustIPNet(p), Gw: net.ParseIP(gw), Protocol: proto, Priority: metric}
		if err := n.h.RouteAdd(&r); err != nil {
			t.Fatalf("add route %s via %s: %v", p, gw, err)
		}
	}
	add("10.244.99.0/24", "10.0.0.9", Protocol, 0) // a node that left while no daemon ran
	add("10.244.1.0/24", "10.0.0.8", Protocol, 0)  // b, before its address changed
	// The operator's, for e's pod CIDR; with a metric of its own, so only
	// the daemon's restraint (not the kernel's EEXIST) keeps a second
	// route to the prefix from shadowing it.
	add("10.244.3.0/24", "10.0.0.7", unix.RTPROT_STATIC, 100)

	api := newAPIServer(t)
	api.set("a", []string{"10.0.0.1"}, "10.244.0.0/24")
	api.set("b", []string{"10.0.0.2"}, "10.244.1.0/24")
	api.set("e", []string{"10.0.0.5"}, "10.244.3.0/24")
	log := &logRecorder{}
	d := n.daemon("a", api, log)
	stop := startDaemon(t, d)

	waitFor(t, "stale route removed", noRoute(t, n.h, "10.244.99.0/24"))
	waitFor(t, "b's route corrected", hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.2", Protocol))
	waitFor(t, "e skipped", func() (bool, string) {
		st := d.Status()
		return slices.ContainsFunc(st.Skipped, func(s SkipStatus) bool {
			return s.Node == "e" && strings.Contains(s.Reason, "left to its owner")
		}), formatStatus(st)
	})
	if ok, state := hasRoute(t, n.h, "10.244.3.0/24", "10.0.0.7", unix.RTPROT_STATIC)(); !ok {
		t.Errorf("the static route for e's pod CIDR was touched:\n%s", state)
	}
	if all := ownRoutes(t, n.h, "10.244.3.0/24"); len(all) != 0 {
		t.Errorf("the daemon routes e's pod CIDR beside the static route: %v", all)
	}
	api.remove("e")
	waitFor(t, "e gone from the status", func() (bool, string) { st := d.Status(); return st.Nodes == 2, formatStatus(st) })
	if ok, state := hasRoute(t, n.h, "10.244.3.0/24", "10.0.0.7", unix.RTPROT_STATIC)(); !ok {
		t.Errorf("the static route went with node e:\n%s", state)
	}

	stop()
	if ok, state := hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.2", Protocol)(); !ok {
		t.Fatalf("stopping the daemon removed its routes:\n%s", state)
	}
	// b leaves while no daemon runs; the next one removes its route.
	api.remove("b")
	d2 := n.daemon("a", api, log)
	startDaemon(t, d2)
	waitFor(t, "b's route removed by the next run", noRoute(t, n.h, "10.244.1.0/24"))
	if ok, state := hasRoute(t, n.h, "10.244.3.0/24", "10.0.0.7", unix.RTPROT_STATIC)(); !ok {
		t.Errorf("the next run touched the static route:\n%s", state)
	}
}

// TestRecovers: the daemon puts back a route someone deleted and the routes
// a link lost while down, and a watch the server ends (missing a deletion)
// is followed by a fresh list.
func TestRecovers(t *testing.T) {
	n := newNode(t, "10.0.0.1/24")
	api := newAPIServer(t)
	api.set("a", []string{"10.0.0.1"}, "10.244.0.0/24")
	api.set("b", []string{"10.0.0.2"}, "10.244.1.0/24")
	api.set("c", []string{"10.0.0.3"}, "10.244.2.0/24")
	log := &logRecorder{}
	d := n.daemon("a", api, log)
	startDaemon(t, d)
	waitFor(t, "route to b's pods", hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.2", Protocol))

	r := routes(t, n.h)[mustPrefix("10.244.1.0/24")]
	if err := n.h.RouteDel(&r); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "deleted route put back", hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.2", Protocol))

	eth0, _ := n.h.LinkByName("eth0")
	if err := n.h.LinkSetDown(eth0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "routes gone with the link", noRoute(t, n.h, "10.244.1.0/24"))
	waitFor(t, "status shows the link down", func() (bool, string) {
		st := d.Status()
		return len(st.Routes) == 0 && slices.ContainsFunc(st.Skipped, func(s SkipStatus) bool {
			return s.Node == "b" && strings.Contains(s.Reason, "down")
		}), formatStatus(st)
	})
	if err := n.h.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "routes back with the link", hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.2", Protocol))

	lists := api.listCount()
	api.removeUnseen("c")
	waitFor(t, "c's route gone after a fresh list", noRoute(t, n.h, "10.244.2.0/24"))
	if api.listCount() <= lists {
		t.Errorf("no fresh list after the watch ended (%d lists before, %d after)", lists, api.listCount())
	}
	api.set("f", []string{"10.0.0.6"}, "10.244.6.0/24")
	waitFor(t, "a node added after the reconnect is routed", hasRoute(t, n.h, "10.244.6.0/24", "10.0.0.6", Protocol))
	if st := d.Status(); !st.Watching || st.LastError != "" {
		t.Errorf("status after recovery: %s", formatStatus(st))
	}
}

// TestAPIUnreachableKeepsRoutes: routes stay while the API cannot be
// listed (they are the datapath; the API being down changes nothing in it).
func TestAPIUnreachableKeepsRoutes(t *testing.T) {
	n := newNode(t, "10.0.0.1/24")
	api := newAPIServer(t)
	api.set("a", []string{"10.0.0.1"}, "10.244.0.0/24")
	api.set("b", []string{"10.0.0.2"}, "10.244.1.0/24")
	log := &logRecorder{}
	d := n.daemon("a", api, log)
	startDaemon(t, d)
	waitFor(t, "route to b's pods", hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.2", Protocol))
	api.cutWatches()
	api.Close()
	waitFor(t, "list failure logged", log.logged(slog.LevelWarn, "pod routes: cannot list nodes"))
	if ok, state := hasRoute(t, n.h, "10.244.1.0/24", "10.0.0.2", Protocol)(); !ok {
		t.Errorf("route lost while the API is down:\n%s", state)
	}
	if st := d.Status(); st.LastError == "" || st.Watching {
		t.Errorf("status while the API is down: %s", formatStatus(st))
	}
}
