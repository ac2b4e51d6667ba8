package podroutes

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestPodToPodWithoutOverlay is the datapath: two nodes on one L2 segment,
// each with a pod behind its own bridge (as the CNI bridge plugin sets them
// up), and a daemon per node fed by the API server. A pod reaches the other
// node's pod by pod IP, IPv4 and IPv6, with nothing but the daemons' routes:
//
//	podA eth0 10.244.1.2 fd10:244:1::2       podB eth0 10.244.2.2 fd10:244:2::2
//	   | veth                                    | veth
//	nodeA cni0 10.244.1.1 fd10:244:1::1      nodeB cni0 10.244.2.1 fd10:244:2::1
//	nodeA eth0 10.0.0.1 fd00::1  ---veth---  nodeB eth0 10.0.0.2 fd00::2
func TestPodToPodWithoutOverlay(t *testing.T) {
	nodeA, nodeB := newNetns(t), newNetns(t)
	veth(t, nodeA, "eth0", nodeB, "eth0")
	configure(t, handleAt(t, nodeA), "eth0", "10.0.0.1/24", "fd00::1/64")
	configure(t, handleAt(t, nodeB), "eth0", "10.0.0.2/24", "fd00::2/64")
	podA := podBehindBridge(t, nodeA, 1)
	podB := podBehindBridge(t, nodeB, 2)

	ln := listenIn(t, podB, "[::]:8080")
	go echo(ln)

	// Without the routes the pods cannot reach each other: what follows is
	// the daemons' doing.
	for _, target := range []string{"10.244.2.2:8080", "[fd10:244:2::2]:8080"} {
		if conn, err := dialIn(t, podA, target, 2*time.Second); err == nil {
			conn.Close()
			t.Fatalf("pod A reached %s before any pod route existed", target)
		}
	}

	api := newAPIServer(t)
	api.set("node-a", []string{"10.0.0.1", "fd00::1"}, "10.244.1.0/24", "fd10:244:1::/64")
	api.set("node-b", []string{"10.0.0.2", "fd00::2"}, "10.244.2.0/24", "fd10:244:2::/64")
	log := &logRecorder{}
	daemons := map[string]*Daemon{
		"node-a": (node{ns: nodeA}).daemon("node-a", api, log),
		"node-b": (node{ns: nodeB}).daemon("node-b", api, log),
	}
	for _, d := range daemons {
		startDaemon(t, d)
	}
	for name, d := range daemons {
		waitFor(t, name+" routes both families", func() (bool, string) {
			st := d.Status()
			return len(st.Routes) == 2, formatStatus(st)
		})
	}

	for _, target := range []string{"10.244.2.2:8080", "[fd10:244:2::2]:8080"} {
		conn, err := dialIn(t, podA, target, 10*time.Second)
		if err != nil {
			t.Fatalf("pod A cannot reach pod B at %s: %v", target, err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "hello from pod A\n")
		reply, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil {
			t.Fatalf("reply from %s: %v", target, err)
		}
		// pod B saw pod A's own address: no masquerading on the way.
		wantFrom := "10.244.1.2"
		if strings.HasPrefix(target, "[") {
			wantFrom = "fd10:244:1::2"
		}
		if want := "pod B got \"hello from pod A\" from " + wantFrom + "\n"; reply != want {
			t.Errorf("reply %q, want %q", reply, want)
		}
	}
}

// podBehindBridge gives node a bridge cni0 with the first address of pod
// CIDR 10.244.i.0/24 and fd10:244:i::/64, and a pod netns behind it with the
// second address and default routes via the bridge; forwarding is on in
// the node.
func podBehindBridge(t *testing.T, nodeNS netns.NsHandle, i int) netns.NsHandle {
	t.Helper()
	h := handleAt(t, nodeNS)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "cni0"
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatalf("bridge cni0: %v", err)
	}
	bridge := configure(t, h, "cni0", fmt.Sprintf("10.244.%d.1/24", i), fmt.Sprintf("fd10:244:%d::1/64", i))
	pod := newNetns(t)
	veth(t, nodeNS, "vethpod", pod, "eth0")
	port, err := h.LinkByName("vethpod")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetMaster(port, bridge); err != nil {
		t.Fatalf("vethpod into cni0: %v", err)
	}
	if err := h.LinkSetUp(port); err != nil {
		t.Fatal(err)
	}
	ph := handleAt(t, pod)
	eth0 := configure(t, ph, "eth0", fmt.Sprintf("10.244.%d.2/24", i), fmt.Sprintf("fd10:244:%d::2/64", i))
	for _, gw := range []string{fmt.Sprintf("10.244.%d.1", i), fmt.Sprintf("fd10:244:%d::1", i)} {
		if err := ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
			t.Fatalf("pod default route via %s: %v", gw, err)
		}
	}
	sysctl(t, nodeNS, "net.ipv4.ip_forward", "1")
	sysctl(t, nodeNS, "net.ipv6.conf.all.forwarding", "1")
	return pod
}

func listenIn(t *testing.T, ns netns.NsHandle, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	inNetns(t, ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

func dialIn(t *testing.T, ns netns.NsHandle, addr string, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var conn net.Conn
	var dialErr error
	inNetns(t, ns, func() error {
		conn, dialErr = net.DialTimeout("tcp", addr, timeout)
		return nil
	})
	return conn, dialErr
}

// echo answers each connection's first line, naming the peer it came from.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil && err != io.EOF {
				return
			}
			from, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "pod B got %q from %s\n", strings.TrimSuffix(line, "\n"), from)
		}()
	}
}
