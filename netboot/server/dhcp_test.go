package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netns"
)

// The DHCP tests need their own network namespaces; initagent's nstest
// helper is internal to initagent, so this package re-executes itself under
// `unshare --net` the same way.
const isolatedEnv = "BALLAST_NETBOOT_TEST_NETNS"

func TestMain(m *testing.M) {
	if os.Getenv(isolatedEnv) != "" {
		exec.Command("ip", "link", "set", "lo", "up").Run()
		os.Exit(m.Run())
	}
	if _, err := exec.LookPath("unshare"); err != nil || os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	cmd := exec.Command("unshare", append([]string{"--net", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), isolatedEnv+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "unshare:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

// dhcpLab is the server side (nb0, 10.99.0.1/24, in the test's namespace)
// and a client namespace holding nc0, the other end of the veth.
type dhcpLab struct {
	name   string // the client namespace
	client netns.NsHandle
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func newDHCPLab(t *testing.T) *dhcpLab {
	t.Helper()
	if os.Getenv(isolatedEnv) == "" {
		t.Skip("needs root and unshare to run in its own network namespace")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "nbtest-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "link", "add", "nb0", "type", "veth", "peer", "name", "nc0", "netns", name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", "nb0").Run() })
	run(t, "ip", "addr", "add", "10.99.0.1/24", "dev", "nb0")
	run(t, "ip", "link", "set", "nb0", "up")
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	run(t, "ip", "-n", name, "link", "set", "nc0", "up")
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return &dhcpLab{name: name, client: h}
}

// inClient runs f on a thread in the client namespace; sockets f creates
// stay there.
func (l *dhcpLab) inClient(t *testing.T, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its changed namespace
		if err := netns.Set(l.client); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// setClientMAC gives nc0 mac: frames from the client namespace come from it.
func (l *dhcpLab) setClientMAC(t *testing.T, mac string) {
	t.Helper()
	run(t, "ip", "-n", l.name, "link", "set", "nc0", "address", mac)
}

func (l *dhcpLab) addClientAddr(t *testing.T, cidr string) {
	t.Helper()
	run(t, "ip", "netns", "exec", l.name, "ip", "addr", "add", cidr, "dev", "nc0")
}

// dhcpClient is an nclient4 client on nc0 that claims to be mac.
func (l *dhcpLab) dhcpClient(t *testing.T, mac string) *nclient4.Client {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	var c *nclient4.Client
	l.inClient(t, func() (err error) {
		c, err = nclient4.New("nc0", nclient4.WithHWAddr(hw), nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// httpFrom is an HTTP client whose connections leave from src in the client namespace.
func (l *dhcpLab) httpFrom(t *testing.T, src string) *http.Client {
	t.Helper()
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			runtime.LockOSThread()
			if err := netns.Set(l.client); err != nil {
				ch <- res{nil, err}
				return
			}
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
			c, err := d.DialContext(ctx, network, addr)
			ch <- res{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

func status(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func startDHCPServer(t *testing.T, mode DHCPMode) *testEnv {
	t.Helper()
	e := startServer(t, func(c *Config) {
		c.DHCPMode, c.Interface, c.HTTPAddr = mode, "nb0", "10.99.0.1:8080"
		if mode == DHCPFull {
			c.RangeStart, c.RangeEnd = netip.MustParseAddr("10.99.0.100"), netip.MustParseAddr("10.99.0.101")
			c.Router, c.DNS = netip.MustParseAddr("10.99.0.1"), []netip.Addr{netip.MustParseAddr("10.99.0.53")}
			c.LeaseTime = 10 * time.Minute
		}
	})
	write(t, filepath.Join(e.machines, "groups.yaml"), "groups:\n  - {name: all, selector: {}, template: all.tmpl}\n")
	write(t, filepath.Join(e.machines, "all.tmpl"), "config of {{.MAC}} at {{.IP}}\n")
	return e
}

func pxeBIOS() []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 0})),
	}
}

func pxeEFI() []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 7})),
	}
}

func ipxeEFI() []dhcpv4.Modifier {
	return append(pxeEFI(),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(optIPXE), []byte{0x13, 1, 1})),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE"))))
}

func TestDHCPFull(t *testing.T) {
	lab := newDHCPLab(t)
	lab.setClientMAC(t, "52:54:00:00:00:0a") // A is the real machine; B and C are chaddrs nc0 makes up
	e := startDHCPServer(t, DHCPFull)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A PXE ROM gets an address, the network's options, and undionly.kpxe from us.
	a := lab.dhcpClient(t, "52:54:00:00:00:0a")
	lease, err := a.Request(ctx, pxeBIOS()...)
	if err != nil {
		t.Fatal(err)
	}
	ack := lease.ACK
	if got := ack.YourIPAddr.String(); got != "10.99.0.100" {
		t.Errorf("yiaddr %s, want 10.99.0.100 (first of the range)", got)
	}
	if ack.BootFileName != "undionly.kpxe" || !ack.ServerIPAddr.Equal(net.IPv4(10, 99, 0, 1)) {
		t.Errorf("boot file %q from %s, want undionly.kpxe from 10.99.0.1", ack.BootFileName, ack.ServerIPAddr)
	}
	if r := ack.Router(); len(r) != 1 || !r[0].Equal(net.IPv4(10, 99, 0, 1)) {
		t.Errorf("router %v", r)
	}
	if d := ack.DNS(); len(d) != 1 || !d[0].Equal(net.IPv4(10, 99, 0, 53)) {
		t.Errorf("dns %v", d)
	}
	if m := ack.SubnetMask(); net.IP(m).String() != "255.255.255.0" {
		t.Errorf("subnet mask %v", net.IP(m))
	}
	if lt := ack.IPAddressLeaseTime(0); lt != 10*time.Minute {
		t.Errorf("lease time %s, want 10m", lt)
	}

	// The same machine, now running ipxe.efi, keeps its address and gets the
	// script URL. iPXE sends its SMBIOS UUID 8f6c2a3e-0000-4000-8000-00000000000a
	// as option 97 in EFI GUID byte order.
	guid := []byte{0, 0x3e, 0x2a, 0x6c, 0x8f, 0, 0, 0, 0x40, 0x80, 0, 0, 0, 0, 0, 0, 0x0a}
	lease, err = a.Request(ctx, append(ipxeEFI(), dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, guid)))...)
	if err != nil {
		t.Fatal(err)
	}
	if lease.ACK.YourIPAddr.String() != "10.99.0.100" {
		t.Errorf("iPXE got %s, want the same 10.99.0.100", lease.ACK.YourIPAddr)
	}
	if want := "http://10.99.0.1:8080/boot.ipxe?mac=52-54-00-00-00-0a&platform=efi"; lease.ACK.BootFileName != want {
		t.Errorf("iPXE boot file %q, want %q", lease.ACK.BootFileName, want)
	}

	// A client that is not netbooting gets an address and no boot file.
	b := lab.dhcpClient(t, "52:54:00:00:00:0b")
	lb, err := b.Request(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if lb.ACK.YourIPAddr.String() != "10.99.0.101" || lb.ACK.BootFileName != "" {
		t.Errorf("plain client: %s with boot file %q, want 10.99.0.101 and none", lb.ACK.YourIPAddr, lb.ACK.BootFileName)
	}

	// The range (two addresses) is used up: a third machine gets no offer.
	c := lab.dhcpClient(t, "52:54:00:00:00:0c")
	short, cancelShort := context.WithTimeout(ctx, 5*time.Second)
	if off, err := c.DiscoverOffer(short); err == nil {
		t.Errorf("offer %s from a full range", off.YourIPAddr)
	}
	cancelShort()

	// Configs follow the leases: A's from A's address only, B's not from A's.
	lab.addClientAddr(t, "10.99.0.100/24")
	lab.addClientAddr(t, "10.99.0.77/32")
	fromA, fromOther := lab.httpFrom(t, "10.99.0.100"), lab.httpFrom(t, "10.99.0.77")
	base := "http://10.99.0.1:8080/config/"
	if s := status(t, fromA, base+"52-54-00-00-00-0a"); s != 200 {
		t.Errorf("A's config from A's lease: %d, want 200", s)
	}
	if s := status(t, fromOther, base+"52-54-00-00-00-0a"); s != 403 {
		t.Errorf("A's config from 10.99.0.77: %d, want 403", s)
	}
	if s := status(t, fromA, base+"52-54-00-00-00-0b"); s != 403 {
		t.Errorf("B's config from A's lease: %d, want 403", s)
	}
	// iPXE's ${uuid} is the UUID A sent; another one selects nothing.
	script := "http://10.99.0.1:8080/boot.ipxe?mac=52-54-00-00-00-0a&platform=efi&uuid="
	if s := status(t, fromA, script+"8f6c2a3e-0000-4000-8000-00000000000a"); s != 200 {
		t.Errorf("A's script with the UUID it sent in DHCP: %d, want 200", s)
	}
	if s := status(t, fromA, base+"52-54-00-00-00-0a?uuid=8f6c2a3e-0000-4000-8000-00000000000a"); s != 200 {
		t.Errorf("A's config with the UUID it sent in DHCP: %d, want 200", s)
	}
	if s := status(t, fromA, script+"8f6c2a3e-0000-4000-8000-000000000009"); s != 403 {
		t.Errorf("A's script with another machine's UUID: %d, want 403", s)
	}
	if !strings.Contains(e.logs.String(), `msg="config served" mac=52:54:00:00:00:0a ip=10.99.0.100 uuid="" source=all.tmpl group=all`) ||
		!strings.Contains(e.logs.String(), "enforced=ip:lease+arp") {
		t.Error("config delivery not logged as enforced by the lease and the ARP entry")
	}

	// B's lease was taken by nc0 (MAC A) with a forged chaddr: from B's
	// leased address it still does not get B's config, because the frames
	// of that address come from A.
	lab.addClientAddr(t, "10.99.0.101/32")
	resp, err := lab.httpFrom(t, "10.99.0.101").Get(base + "52-54-00-00-00-0b")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(body), "10.99.0.101 is at 52:54:00:00:00:0a in the server's ARP table, not at 52:54:00:00:00:0b") {
		t.Errorf("B's config to the host that leased B's address with a forged chaddr: %s %q, want 403", resp.Status, body)
	}

	// A RELEASE for B from another address than B's lease is ignored.
	rel, err := dhcpv4.NewReleaseFromACK(lb.ACK)
	if err != nil {
		t.Fatal(err)
	}
	sendRelease := func(src net.IP) {
		lab.inClient(t, func() error {
			conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: src, Port: 68}, &net.UDPAddr{IP: net.IPv4(10, 99, 0, 1), Port: 67})
			if err != nil {
				return err
			}
			defer conn.Close()
			_, err = conn.Write(rel.ToBytes())
			return err
		})
	}
	sendRelease(net.IPv4(10, 99, 0, 100))
	waitLog(t, e.logs, regexp.MustCompile(`msg="dhcp: ignoring a release sent from another address than the lease" mac=52:54:00:00:00:0b .*lease=10.99.0.101 from=10.99.0.100`))

	// After a release the address is free for the next machine.
	// (sent from B's address: nclient4's raw socket sends from 0.0.0.0, which
	// the kernel drops as a martian for a unicast destination)
	sendRelease(net.IPv4(10, 99, 0, 101))
	waitLog(t, e.logs, regexp.MustCompile(`msg="dhcp: lease returned" mac=52:54:00:00:00:0b`))
	lc, err := c.Request(ctx)
	if err != nil {
		t.Fatalf("after B's release: %v", err)
	}
	if lc.ACK.YourIPAddr.String() != "10.99.0.101" {
		t.Errorf("C got %s, want B's released 10.99.0.101", lc.ACK.YourIPAddr)
	}
}

func TestDHCPProxy(t *testing.T) {
	lab := newDHCPLab(t)
	lab.setClientMAC(t, "52:54:00:00:00:0a")
	e := startDHCPServer(t, DHCPProxy)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	cases := []struct {
		name     string
		mods     []dhcpv4.Modifier
		file     string
		option43 []byte
	}{
		{"BIOS PXE ROM", pxeBIOS(), "undionly.kpxe", []byte{6, 1, 8, 255}},
		{"UEFI PXE", pxeEFI(), "ipxe.efi", nil},
		{"iPXE", ipxeEFI(), "http://10.99.0.1:8080/boot.ipxe?mac=52-54-00-00-00-0a&platform=efi", nil},
	}
	client := lab.dhcpClient(t, "52:54:00:00:00:0a")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			offer, err := client.DiscoverOffer(ctx, c.mods...)
			if err != nil {
				t.Fatal(err)
			}
			if !offer.YourIPAddr.IsUnspecified() {
				t.Errorf("proxyDHCP offered yiaddr %s: it must never hand out addresses", offer.YourIPAddr)
			}
			if offer.BootFileName != c.file || !offer.ServerIPAddr.Equal(net.IPv4(10, 99, 0, 1)) {
				t.Errorf("boot file %q from %s, want %q from 10.99.0.1", offer.BootFileName, offer.ServerIPAddr, c.file)
			}
			if offer.ClassIdentifier() != "PXEClient" {
				t.Errorf("vendor class %q, want PXEClient", offer.ClassIdentifier())
			}
			if got := offer.Options.Get(dhcpv4.OptionVendorSpecificInformation); string(got) != string(c.option43) {
				t.Errorf("option 43 %v, want %v", got, c.option43)
			}
			if offer.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || offer.Options.Has(dhcpv4.OptionRouter) {
				t.Error("proxy offer carries address options")
			}
		})
	}

	// A client that is not PXE booting is left to the site's server.
	plain := lab.dhcpClient(t, "52:54:00:00:00:0b")
	short, cancelShort := context.WithTimeout(ctx, 5*time.Second)
	if off, err := plain.DiscoverOffer(short); err == nil {
		t.Errorf("proxyDHCP answered a non-PXE client: %v", off.Summary())
	}
	cancelShort()

	// The REQUEST a client broadcasts to the site's server tells us its address.
	hw, _ := net.ParseMAC("52:54:00:00:00:0a")
	req, err := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 99, 0, 150))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 99, 0, 254))))
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort = context.WithTimeout(ctx, 2*time.Second)
	client.SendAndRead(short, nclient4.DefaultServers, req, nil) // nobody answers: the site's server is imaginary
	cancelShort()
	waitLog(t, e.logs, regexp.MustCompile(`msg="dhcp: client takes an address from the site's server" mac=52:54:00:00:00:0a .*ip=10.99.0.150 how=dhcp-request`))

	// A REQUEST naming another MAC in chaddr (frames still from nc0, MAC
	// 0a) records nothing for that MAC.
	forged, err := dhcpv4.New(dhcpv4.WithHwAddr(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x0b}), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithBroadcast(true), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 99, 0, 151))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 99, 0, 254))))
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort = context.WithTimeout(ctx, 2*time.Second)
	client.SendAndRead(short, nclient4.DefaultServers, forged, nil)
	cancelShort()
	waitLog(t, e.logs, regexp.MustCompile(`msg="dhcp: ignoring a request whose chaddr is not the MAC that sent the frame: no address recorded for it" mac=52:54:00:00:00:0b .*frame_source=52:54:00:00:00:0a`))

	// Port 4011: the client, now with its address, asks for boot info again.
	lab.addClientAddr(t, "10.99.0.150/24")
	var conn *net.UDPConn
	lab.inClient(t, func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 99, 0, 150), Port: 4011})
		return err
	})
	defer conn.Close()
	preq, err := dhcpv4.New(append(pxeEFI(), dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(net.IPv4(10, 99, 0, 150)))...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteToUDP(preq.ToBytes(), &net.UDPAddr{IP: net.IPv4(10, 99, 0, 1), Port: pxePort}); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no answer on port 4011: %v", err)
	}
	ack, err := dhcpv4.FromBytes(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	if ack.MessageType() != dhcpv4.MessageTypeAck || ack.TransactionID != preq.TransactionID || !ack.YourIPAddr.IsUnspecified() ||
		ack.BootFileName != "ipxe.efi" {
		t.Errorf("port 4011 answer %s, want an ACK for our xid with ipxe.efi and no yiaddr", ack.Summary())
	}
	if got := ack.Options.Get(dhcpv4.OptionVendorSpecificInformation); len(got) < 3 || got[0] != 71 {
		t.Errorf("port 4011 option 43 %v, want a PXE boot item (71)", got)
	}

	// Configs follow what DHCP saw: from 10.99.0.150 only.
	lab.addClientAddr(t, "10.99.0.77/32")
	base := "http://10.99.0.1:8080/config/52-54-00-00-00-0a"
	if s := status(t, lab.httpFrom(t, "10.99.0.150"), base); s != 200 {
		t.Errorf("config from the address seen in DHCP: %d, want 200", s)
	}
	if s := status(t, lab.httpFrom(t, "10.99.0.77"), base); s != 403 {
		t.Errorf("config from another address: %d, want 403", s)
	}
	lab.addClientAddr(t, "10.99.0.151/32")
	if s := status(t, lab.httpFrom(t, "10.99.0.151"), "http://10.99.0.1:8080/config/52-54-00-00-00-0b"); s != 403 {
		t.Errorf("config of the MAC named in a forged chaddr, from the address it claimed: %d, want 403", s)
	}
	if !regexp.MustCompile(`msg="config refused" mac=52:54:00:00:00:0b ip=10.99.0.151 .*reason="52:54:00:00:00:0b was not seen in DHCP`).MatchString(e.logs.String()) {
		t.Error("refusal of the forged MAC not logged")
	}
	if !regexp.MustCompile(`msg="config served" mac=52:54:00:00:00:0a ip=10.99.0.150 .*enforced=ip:proxy-request\+arp`).MatchString(e.logs.String()) {
		t.Error("config to the proxy client not logged as enforced by its port-4011 request and its ARP entry")
	}
	if strings.Contains(e.logs.String(), `msg="dhcp: offer"`) {
		t.Error("proxy mode logged an address offer")
	}
}

// waitLog waits (at most 30 s) until the server has logged a line matching re.
func waitLog(t *testing.T, logs *logBuffer, re *regexp.Regexp) {
	t.Helper()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		changed := logs.next()
		if re.MatchString(logs.String()) {
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("server never logged %s", re)
		}
	}
}
