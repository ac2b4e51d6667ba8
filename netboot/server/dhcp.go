package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// PXE client architectures (DHCP option 93, RFC 4578 and IANA's registry).
const (
	archBIOS     = 0
	archEFIx64   = 7
	archEFIBC    = 9 // EFI byte code; x86-64 firmware sends it too
	pxePort      = 4011
	optIPXE      = 175 // iPXE's encapsulated options: present means "I am iPXE"
	optUserClass = 77
)

// Files handed to PXE ROMs for each architecture.
var ipxeBinaries = map[int]string{archBIOS: "undionly.kpxe", archEFIx64: "ipxe.efi", archEFIBC: "ipxe.efi"}

type dhcpServer struct {
	s        *Server
	mode     DHCPMode
	serverIP netip.Addr
	subnet   netip.Prefix
	conn67   net.PacketConn
	conn4011 net.PacketConn // proxy mode only
	sniffer  *sniffer       // proxy mode only

	mu     sync.Mutex
	leases map[string]lease // by MAC, full mode
}

type lease struct {
	ip      netip.Addr
	expires time.Time
	offered bool // offered but not yet requested
}

func newDHCPServer(s *Server) (*dhcpServer, error) {
	cfg := s.cfg
	if cfg.Interface == "" {
		return nil, fmt.Errorf("dhcp mode %s needs --interface: the interface facing the machines", cfg.DHCPMode)
	}
	ifc, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", cfg.Interface, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, fmt.Errorf("interface %s addresses: %w", cfg.Interface, err)
	}
	d := &dhcpServer{s: s, mode: cfg.DHCPMode, serverIP: cfg.ServerIP, leases: map[string]lease{}}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP.To4())
		ones, _ := ipn.Mask.Size()
		pfx := netip.PrefixFrom(ip, ones)
		if !d.serverIP.IsValid() || d.serverIP == ip {
			d.serverIP, d.subnet = ip, pfx.Masked()
			break
		}
	}
	if !d.subnet.IsValid() {
		if cfg.ServerIP.IsValid() {
			return nil, fmt.Errorf("interface %s has no address %s: give it the address or drop --server-ip", cfg.Interface, cfg.ServerIP)
		}
		return nil, fmt.Errorf("interface %s has no IPv4 address: the DHCP server answers from it and puts it in next-server", cfg.Interface)
	}
	if d.mode == DHCPFull {
		if !cfg.RangeStart.Is4() || !cfg.RangeEnd.Is4() {
			return nil, errors.New("dhcp mode full needs --range FIRST-LAST (IPv4 addresses in the interface's subnet)")
		}
		if !d.subnet.Contains(cfg.RangeStart) || !d.subnet.Contains(cfg.RangeEnd) || cfg.RangeEnd.Less(cfg.RangeStart) {
			return nil, fmt.Errorf("--range %s-%s must be inside %s (interface %s) and FIRST must not be after LAST", cfg.RangeStart, cfg.RangeEnd, d.subnet, cfg.Interface)
		}
		if cfg.Router.IsValid() && !d.subnet.Contains(cfg.Router) {
			return nil, fmt.Errorf("--router %s is not inside %s: the clients could not reach it", cfg.Router, d.subnet)
		}
	}
	if d.conn67, err = server4.NewIPv4UDPConn(cfg.Interface, &net.UDPAddr{Port: dhcpv4.ServerPort}); err != nil {
		return nil, fmt.Errorf("dhcp port 67 on %s: %w", cfg.Interface, err)
	}
	if d.mode == DHCPProxy {
		if d.conn4011, err = server4.NewIPv4UDPConn(cfg.Interface, &net.UDPAddr{Port: pxePort}); err != nil {
			d.conn67.Close()
			return nil, fmt.Errorf("proxyDHCP port %d on %s: %w", pxePort, cfg.Interface, err)
		}
		if d.sniffer, err = newSniffer(d, cfg.Interface); err != nil {
			d.close()
			return nil, err
		}
	}
	return d, nil
}

func (d *dhcpServer) close() {
	d.conn67.Close()
	if d.conn4011 != nil {
		d.conn4011.Close()
	}
	if d.sniffer != nil {
		d.sniffer.close()
	}
}

func (d *dhcpServer) serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, d.close)
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	if d.sniffer != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- d.sniffer.serve(ctx)
		}()
	}
	for _, c := range []net.PacketConn{d.conn67, d.conn4011} {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- d.readLoop(ctx, c)
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *dhcpServer) readLoop(ctx context.Context, conn net.PacketConn) error {
	buf := make([]byte, 4096)
	port := conn.LocalAddr().(*net.UDPAddr).Port
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootRequest || len(m.ClientHWAddr) != 6 {
			continue // our own broadcasts come back too
		}
		reply := d.handle(m, port, peer.(*net.UDPAddr))
		if reply == nil {
			continue
		}
		dst := d.destination(m, peer.(*net.UDPAddr), port)
		if _, err := conn.WriteTo(reply.ToBytes(), dst); err != nil {
			d.s.log.Warn("dhcp: send failed", "mac", m.ClientHWAddr.String(), "to", dst.String(), "err", err)
		}
	}
}

// destination follows RFC 2131 §4.1 for clients without relays: unicast to
// a client that has an address, broadcast otherwise.
func (d *dhcpServer) destination(m *dhcpv4.DHCPv4, peer *net.UDPAddr, port int) *net.UDPAddr {
	if port == pxePort && peer.IP != nil && !peer.IP.IsUnspecified() {
		return peer
	}
	if !m.ClientIPAddr.IsUnspecified() && m.ClientIPAddr != nil {
		return &net.UDPAddr{IP: m.ClientIPAddr, Port: dhcpv4.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}

// pxeClient is what a request says about its sender.
type pxeClient struct {
	pxe  bool // vendor class PXEClient (or iPXE)
	ipxe bool
	arch int // -1 when absent
	uuid string
}

func classify(m *dhcpv4.DHCPv4) pxeClient {
	c := pxeClient{arch: -1}
	vc := m.ClassIdentifier()
	c.pxe = len(vc) >= 9 && vc[:9] == "PXEClient"
	c.ipxe = m.Options.Has(dhcpv4.GenericOptionCode(optIPXE)) ||
		bytes.Contains(m.Options.Get(dhcpv4.GenericOptionCode(optUserClass)), []byte("iPXE"))
	if a := m.Options.Get(dhcpv4.OptionClientSystemArchitectureType); len(a) >= 2 {
		c.arch = int(binary.BigEndian.Uint16(a))
	}
	if id := m.Options.Get(dhcpv4.OptionClientMachineIdentifier); len(id) == 17 && id[0] == 0 {
		c.uuid = formatUUID(id[1:])
	}
	return c
}

// bootFile is what this client should load next: the boot script URL for
// iPXE, the iPXE binary for its architecture for a PXE ROM.
func (d *dhcpServer) bootFile(m *dhcpv4.DHCPv4, c pxeClient) (string, bool) {
	if c.ipxe {
		_, port, _ := net.SplitHostPort(d.s.httpLn.Addr().String())
		platform := "pcbios"
		if c.arch == archEFIx64 || c.arch == archEFIBC {
			platform = "efi"
		}
		return fmt.Sprintf("http://%s%s?mac=%s&platform=%s", net.JoinHostPort(d.serverIP.String(), port), ScriptPath,
			hyphenMAC(m.ClientHWAddr), platform), true
	}
	if name, ok := ipxeBinaries[c.arch]; ok {
		return name, true
	}
	return "", false
}

func (d *dhcpServer) handle(m *dhcpv4.DHCPv4, port int, peer *net.UDPAddr) *dhcpv4.DHCPv4 {
	c := classify(m)
	log := d.s.log.With("mac", m.ClientHWAddr.String(), "xid", m.TransactionID.String(), "type", m.MessageType().String(),
		"port", port, "arch", c.arch, "ipxe", c.ipxe)
	if d.mode == DHCPFull {
		return d.handleFull(m, c, peer, log)
	}
	return d.handleProxy(m, c, port, log)
}

func (d *dhcpServer) handleProxy(m *dhcpv4.DHCPv4, c pxeClient, port int, log *slog.Logger) *dhcpv4.DHCPv4 {
	if !c.pxe && !c.ipxe {
		return nil // not a netboot client: the site's server handles it
	}
	var typ dhcpv4.MessageType
	switch {
	case port == pxePort && m.MessageType() == dhcpv4.MessageTypeRequest:
		typ = dhcpv4.MessageTypeAck // the sniffer records the sighting
	case port != pxePort && m.MessageType() == dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	default:
		return nil
	}
	file, ok := d.bootFile(m, c)
	if !ok {
		log.Warn("dhcp: no boot file for this client architecture (want 0 BIOS, 7 or 9 x86-64 UEFI)")
		return nil
	}
	reply, err := dhcpv4.NewReplyFromRequest(m,
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithServerIP(d.serverIP.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(d.serverIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")),
	)
	if err != nil {
		log.Error("dhcp: cannot build reply", "err", err)
		return nil
	}
	reply.YourIPAddr = net.IPv4zero // proxyDHCP never hands out addresses
	reply.BootFileName = file
	if id := m.Options.Get(dhcpv4.OptionClientMachineIdentifier); id != nil {
		reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, id))
	}
	efi := c.arch == archEFIx64 || c.arch == archEFIBC
	switch {
	case port == pxePort:
		// PXE boot item 0x8000 layer 0: "the file in this packet".
		reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{71, 4, 0x80, 0x00, 0x00, 0x00, 255}))
	case !efi:
		// Discovery control 8: skip boot server discovery, load the file named here.
		reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{6, 1, 8, 255}))
		// UEFI firmware (OVMF's PxeBcDxe among them) treats an offer without
		// option 43 as "ask on port 4011", which it handles more reliably.
	}
	log.Info("dhcp: proxy "+typ.String(), "file", file, "next_server", d.serverIP.String(), "uuid", c.uuid)
	return reply
}

// observe records what a DHCP request seen on the wire (by the sniffer,
// proxy mode) says about its sender's address, if the frame came from the
// MAC the request names. Every REQUEST to the site's server tells us which
// address the client is taking; one on port 4011 comes from its address.
func (d *dhcpServer) observe(m *dhcpv4.DHCPv4, port int, srcIP netip.Addr, frameSrc net.HardwareAddr) {
	if m.MessageType() != dhcpv4.MessageTypeRequest {
		return
	}
	c := classify(m)
	log := d.s.log.With("mac", m.ClientHWAddr.String(), "xid", m.TransactionID.String(), "port", port)
	if !bytes.Equal(frameSrc, m.ClientHWAddr) {
		if gi := m.GatewayIPAddr; gi != nil && !gi.IsUnspecified() {
			log.Debug("dhcp: ignoring a relayed request", "giaddr", gi.String())
			return
		}
		log.Warn("dhcp: ignoring a request whose chaddr is not the MAC that sent the frame: no address recorded for it",
			"frame_source", frameSrc.String())
		return
	}
	ip, how := netip.Addr{}, ""
	switch {
	case port == pxePort:
		if ci, ok := netip.AddrFromSlice(m.ClientIPAddr.To4()); ok && !ci.IsUnspecified() && ci == srcIP {
			ip, how = ci, "proxy-request"
		}
	case m.RequestedIPAddress() != nil && !m.RequestedIPAddress().IsUnspecified():
		ip, _ = netip.AddrFromSlice(m.RequestedIPAddress().To4())
		how = "dhcp-request"
	case m.ClientIPAddr != nil && !m.ClientIPAddr.IsUnspecified():
		ip, _ = netip.AddrFromSlice(m.ClientIPAddr.To4())
		how = "ciaddr"
	}
	if !ip.IsValid() {
		return
	}
	d.s.seen.record(m.ClientHWAddr, ip, how, c.uuid)
	if how == "proxy-request" {
		log.Info("dhcp: client asks for boot information from its address", "ip", ip.String(), "how", how, "uuid", c.uuid)
		return
	}
	log.Info("dhcp: client takes an address from the site's server", "ip", ip.String(), "how", how, "uuid", c.uuid)
}

func (d *dhcpServer) handleFull(m *dhcpv4.DHCPv4, c pxeClient, peer *net.UDPAddr, log *slog.Logger) *dhcpv4.DHCPv4 {
	mac := m.ClientHWAddr.String()
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		ip, err := d.allocate(mac)
		if err != nil {
			log.Warn("dhcp: cannot offer", "err", err)
			return nil
		}
		log.Info("dhcp: offer", "ip", ip.String())
		return d.fullReply(m, c, dhcpv4.MessageTypeOffer, ip, log)
	case dhcpv4.MessageTypeRequest:
		if sid := m.ServerIdentifier(); sid != nil && !sid.Equal(d.serverIP.AsSlice()) {
			d.mu.Lock()
			if l, ok := d.leases[mac]; ok && l.offered {
				delete(d.leases, mac) // it chose another server
			}
			d.mu.Unlock()
			return nil
		}
		want := m.RequestedIPAddress()
		if want == nil || want.IsUnspecified() {
			want = m.ClientIPAddr
		}
		wantIP, _ := netip.AddrFromSlice(want.To4())
		d.mu.Lock()
		l, ok := d.leases[mac]
		if ok && l.ip == wantIP {
			l.offered = false
			l.expires = time.Now().Add(d.s.cfg.LeaseTime)
			d.leases[mac] = l
		}
		d.mu.Unlock()
		if !ok {
			log.Info("dhcp: request from a client without a lease here, staying silent", "requested", wantIP.String())
			return nil
		}
		if l.ip != wantIP {
			log.Info("dhcp: nak", "requested", wantIP.String())
			reply, err := dhcpv4.NewReplyFromRequest(m, dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(d.serverIP.AsSlice())))
			if err != nil {
				return nil
			}
			return reply
		}
		d.s.seen.record(m.ClientHWAddr, wantIP, "lease", c.uuid)
		log.Info("dhcp: ack", "ip", wantIP.String(), "lease", d.s.cfg.LeaseTime.String())
		return d.fullReply(m, c, dhcpv4.MessageTypeAck, wantIP, log)
	case dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
		d.mu.Lock()
		l, ok := d.leases[mac]
		// A RELEASE comes from the leased address (RFC 2131 §4.4.6): one
		// from elsewhere is another host trying to take the lease away.
		if ok && m.MessageType() == dhcpv4.MessageTypeRelease && peer != nil {
			if pip, _ := netip.AddrFromSlice(peer.IP.To4()); pip != l.ip {
				d.mu.Unlock()
				log.Warn("dhcp: ignoring a release sent from another address than the lease", "lease", l.ip.String(), "from", peer.IP.String())
				return nil
			}
		}
		delete(d.leases, mac)
		d.mu.Unlock()
		d.s.seen.forget(m.ClientHWAddr)
		log.Info("dhcp: lease returned")
	}
	return nil
}

func (d *dhcpServer) fullReply(m *dhcpv4.DHCPv4, c pxeClient, typ dhcpv4.MessageType, ip netip.Addr, log *slog.Logger) *dhcpv4.DHCPv4 {
	cfg := d.s.cfg
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithYourIP(ip.AsSlice()),
		dhcpv4.WithServerIP(d.serverIP.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(d.serverIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(net.CIDRMask(d.subnet.Bits(), 32))),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(cfg.LeaseTime)),
	}
	if cfg.Router.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(cfg.Router.AsSlice())))
	}
	if len(cfg.DNS) > 0 {
		var ips []net.IP
		for _, a := range cfg.DNS {
			ips = append(ips, a.AsSlice())
		}
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(ips...)))
	}
	reply, err := dhcpv4.NewReplyFromRequest(m, mods...)
	if err != nil {
		log.Error("dhcp: cannot build reply", "err", err)
		return nil
	}
	if c.pxe || c.ipxe {
		if file, ok := d.bootFile(m, c); ok {
			reply.BootFileName = file
			log.Info("dhcp: boot file", "file", file, "next_server", d.serverIP.String())
		} else {
			log.Warn("dhcp: no boot file for this client architecture (want 0 BIOS, 7 or 9 x86-64 UEFI)")
		}
	}
	return reply
}

// allocate returns mac's address: its current lease, else the first free
// address of the range.
func (d *dhcpServer) allocate(mac string) (netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if l, ok := d.leases[mac]; ok {
		if l.offered {
			l.expires = now.Add(time.Minute)
			d.leases[mac] = l
		}
		return l.ip, nil
	}
	used := map[netip.Addr]bool{d.serverIP: true}
	for m, l := range d.leases {
		if l.expires.Before(now) {
			delete(d.leases, m)
			continue
		}
		used[l.ip] = true
	}
	for ip := d.s.cfg.RangeStart; !d.s.cfg.RangeEnd.Less(ip); ip = ip.Next() {
		if !used[ip] && ip != d.s.cfg.Router {
			// An offer holds the address for a minute; the REQUEST extends it to the lease time.
			d.leases[mac] = lease{ip: ip, expires: now.Add(time.Minute), offered: true}
			return ip, nil
		}
	}
	return netip.Addr{}, errors.New("address range " + d.s.cfg.RangeStart.String() + "-" + d.s.cfg.RangeEnd.String() + " is full (" + strconv.Itoa(len(d.leases)) + " leases)")
}
