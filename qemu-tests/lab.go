package qemutests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// Lab is an isolated L2 network for VMs: a network namespace holding a
// bridge (the "switch", with the lab's gateway address) and one tap device
// per VM port. Nothing in it is reachable from the host's interfaces.
type Lab struct {
	Name    string // netns name
	Gateway string // the bridge's address, e.g. 192.0.2.1
	Prefix  int
	dir     string
	procs   []*exec.Cmd
	servers []*http.Server
	taps    int
}

// NewLab creates the namespace and bridge. Close removes everything.
func NewLab(gateway string, prefix int) (*Lab, error) {
	b := make([]byte, 4)
	rand.Read(b)
	l := &Lab{Name: "blab-" + hex.EncodeToString(b), Gateway: gateway, Prefix: prefix}
	dir, err := os.MkdirTemp("", l.Name+"-")
	if err != nil {
		return nil, err
	}
	l.dir = dir
	for _, args := range [][]string{
		{"netns", "add", l.Name},
		{"-n", l.Name, "link", "set", "lo", "up"},
		{"-n", l.Name, "link", "add", "br0", "type", "bridge"},
		{"-n", l.Name, "addr", "add", fmt.Sprintf("%s/%d", gateway, prefix), "dev", "br0"},
		{"-n", l.Name, "link", "set", "br0", "up"},
	} {
		if err := ip(args...); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Tap adds a tap device on the bridge and returns QEMU arguments for a
// virtio NIC with mac on it.
func (l *Lab) Tap(mac string) ([]string, error) { return l.TapNIC("virtio-net-pci", mac) }

// TapNIC is Tap for a NIC of the given QEMU model (e1000e, e1000, …).
func (l *Lab) TapNIC(model, mac string) ([]string, error) {
	name := fmt.Sprintf("tap%d", l.taps)
	l.taps++
	for _, args := range [][]string{
		{"-n", l.Name, "tuntap", "add", name, "mode", "tap"},
		{"-n", l.Name, "link", "set", name, "master", "br0"},
		{"-n", l.Name, "link", "set", name, "up"},
	} {
		if err := ip(args...); err != nil {
			return nil, err
		}
	}
	return []string{"-netdev", "tap,id=" + name + ",ifname=" + name + ",script=no,downscript=no",
		"-device", model + ",netdev=" + name + ",mac=" + mac}, nil
}

// DHCP runs dnsmasq as the lab's DHCP and DNS server (DNS on the gateway
// address), handing out addresses from first to last (extra are more
// dnsmasq options).
func (l *Lab) DHCP(first, last string, extra ...string) error {
	args := append([]string{"netns", "exec", l.Name, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
		// DNS too, on the gateway address: authoritative for lab.test, no upstreams.
		"--port=53", "--no-resolv", "--no-hosts", "--local=/lab.test/", "--address=/gateway.lab.test/" + l.Gateway,
		"--interface=br0", "--bind-interfaces", "--log-dhcp", "--log-queries",
		"--dhcp-leasefile=" + filepath.Join(l.dir, "leases"), "--pid-file=" + filepath.Join(l.dir, "dnsmasq.pid"),
		fmt.Sprintf("--dhcp-range=%s,%s,2m", first, last),
		"--dhcp-option=option:router," + l.Gateway}, extra...)
	cmd := exec.Command("ip", args...)
	log, err := os.OpenFile(filepath.Join(l.dir, "dnsmasq.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dnsmasq: %w (apt-get install -y dnsmasq-base)", err)
	}
	l.procs = append(l.procs, cmd)
	return nil
}

// StopDHCP stops the lab's dnsmasq processes (the lease file is kept, so a
// restarted one knows the leases).
func (l *Lab) StopDHCP() {
	for _, p := range l.procs {
		p.Process.Kill()
		p.Wait()
	}
	l.procs = nil
}

// DHCPLog returns what dnsmasq logged so far.
func (l *Lab) DHCPLog() string {
	b, _ := os.ReadFile(filepath.Join(l.dir, "dnsmasq.log"))
	return string(b)
}

// Serve serves h on the lab gateway's port inside the namespace.
func (l *Lab) Serve(port int, h http.Handler) error {
	ln, err := l.Listen("tcp", fmt.Sprintf("%s:%d", l.Gateway, port))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	l.servers = append(l.servers, srv)
	go srv.Serve(ln)
	return nil
}

// Listen opens a listener inside the namespace.
func (l *Lab) Listen(network, addr string) (ln net.Listener, err error) {
	err = l.inside(func() error {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// inside runs fn on a thread switched into the lab's namespace: a socket
// keeps the namespace it was created in.
func (l *Lab) inside(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its changed namespace
		ns, err := netns.GetFromName(l.Name)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Ping reports whether addr answers ICMP echo from inside the lab.
func (l *Lab) Ping(ctx context.Context, addr string) error {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", l.Name, "ping", "-c", "1", "-W", "2", addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s: %v: %s", addr, err, out)
	}
	return nil
}

// Close stops the lab's processes and removes the namespace.
func (l *Lab) Close() {
	for _, s := range l.servers {
		s.Close()
	}
	for _, p := range l.procs {
		p.Process.Kill()
		p.Wait()
	}
	exec.Command("ip", "netns", "del", l.Name).Run()
	os.RemoveAll(l.dir)
}

// DialContext connects from inside the namespace, like a host on the lab's switch.
func (l *Lab) DialContext(ctx context.Context, network, addr string) (c net.Conn, err error) {
	err = l.inside(func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
