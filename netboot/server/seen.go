package server

import (
	"container/list"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// DefaultMaxSightings is how many MACs the sightings table holds unless
// Config.MaxSightings says otherwise.
const DefaultMaxSightings = 4096

// seen remembers which IPv4 address (and DHCP client UUID) each MAC had in
// DHCP, as far as this server can vouch for it: the address it leased
// itself (full mode), or, in proxy mode, the address a client asked the
// site's server for (option 50 or ciaddr of its DHCPREQUEST) or used on
// port 4011, recorded only when the Ethernet frame came from that MAC
// (see sniffer). It is what config delivery checks.
//
// Entries expire ttl after they were last confirmed, and at most max are
// kept: the least recently confirmed one is forgotten first.
type seen struct {
	mu    sync.Mutex
	now   func() time.Time
	ttl   time.Duration
	max   int
	log   *slog.Logger
	byMAC map[string]*list.Element // of *sighting
	byIP  map[netip.Addr]string
	order *list.List // least recently confirmed first
}

type sighting struct {
	mac  string
	ip   netip.Addr // invalid once released or moved to another MAC
	how  string     // "lease", "dhcp-request", "ciaddr", "proxy-request"
	uuid string     // option 97 as sent (hex of its 16 bytes), "" when none
	when time.Time
}

func newSeen(now func() time.Time, ttl time.Duration, max int, log *slog.Logger) *seen {
	return &seen{now: now, ttl: ttl, max: max, log: log,
		byMAC: map[string]*list.Element{}, byIP: map[netip.Addr]string{}, order: list.New()}
}

// expireLocked drops every entry not confirmed within ttl.
func (s *seen) expireLocked(now time.Time) {
	for e := s.order.Front(); e != nil; e = s.order.Front() {
		sg := e.Value.(*sighting)
		if now.Sub(sg.when) < s.ttl {
			return
		}
		s.log.Debug("dhcp sighting expired", "mac", sg.mac, "ip", addrOrEmpty(sg.ip), "age", now.Sub(sg.when).String())
		s.removeLocked(e)
	}
}

func (s *seen) removeLocked(e *list.Element) {
	sg := e.Value.(*sighting)
	if sg.ip.IsValid() && s.byIP[sg.ip] == sg.mac {
		delete(s.byIP, sg.ip)
	}
	delete(s.byMAC, sg.mac)
	s.order.Remove(e)
}

// record notes that mac uses ip. A zero ip only refreshes the other fields.
func (s *seen) record(mac net.HardwareAddr, ip netip.Addr, how string, uuid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.expireLocked(now)
	key := mac.String()
	e, had := s.byMAC[key]
	if !had {
		if s.max > 0 && s.order.Len() >= s.max {
			old := s.order.Front().Value.(*sighting)
			s.log.Warn("dhcp sightings table is full: forgetting the least recently seen MAC (raise --max-sightings if the fleet is this large)",
				"max", s.max, "forgotten_mac", old.mac, "forgotten_ip", addrOrEmpty(old.ip), "age", now.Sub(old.when).String())
			s.removeLocked(s.order.Front())
		}
		e = s.order.PushBack(&sighting{mac: key})
		s.byMAC[key] = e
	} else {
		s.order.MoveToBack(e)
	}
	sg := e.Value.(*sighting)
	sg.when = now
	if uuid != "" {
		sg.uuid = uuid
	}
	if ip.IsValid() && !ip.IsUnspecified() {
		if sg.ip.IsValid() && s.byIP[sg.ip] == key {
			delete(s.byIP, sg.ip)
		}
		// The address moved to this MAC: the old owner no longer has it.
		if prev, ok := s.byIP[ip]; ok && prev != key {
			if pe, ok := s.byMAC[prev]; ok {
				pe.Value.(*sighting).ip = netip.Addr{}
			}
		}
		sg.ip, sg.how = ip, how
		s.byIP[ip] = key
	}
}

// forget drops the address of mac (DHCP release).
func (s *seen) forget(mac net.HardwareAddr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := mac.String()
	if e, ok := s.byMAC[key]; ok {
		sg := e.Value.(*sighting)
		if sg.ip.IsValid() && s.byIP[sg.ip] == key {
			delete(s.byIP, sg.ip)
		}
		sg.ip = netip.Addr{}
	}
}

// lookup returns mac's sighting if it has not expired; its ip may be
// invalid (released, or the address moved to another MAC).
func (s *seen) lookup(mac net.HardwareAddr) (sighting, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.now())
	e, ok := s.byMAC[mac.String()]
	if !ok {
		return sighting{}, false
	}
	return *e.Value.(*sighting), true
}

// ipOf returns mac's sighting when it has an address.
func (s *seen) ipOf(mac net.HardwareAddr) (sighting, bool) {
	sg, ok := s.lookup(mac)
	return sg, ok && sg.ip.IsValid()
}

// macOf returns the MAC that had ip in DHCP, or "".
func (s *seen) macOf(ip netip.Addr) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.now())
	return s.byIP[ip.Unmap()]
}

func (s *seen) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len()
}

func addrOrEmpty(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// formatUUID renders DHCP option 97's 16 bytes as they are on the wire;
// all-zero and all-ones UUIDs (SMBIOS: "not set") are none.
func formatUUID(u []byte) string {
	zero, ones := true, true
	for _, b := range u {
		zero = zero && b == 0
		ones = ones && b == 0xff
	}
	if zero || ones {
		return ""
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// normalizeUUID lowercases a UUID from a URL; the SMBIOS "not set" values
// (all zeros, all ones) become "".
func normalizeUUID(u string) string {
	u = strings.ToLower(u)
	if strings.Trim(u, "0-") == "" || strings.Trim(u, "f-") == "" {
		return ""
	}
	return u
}

// swapGUID converts between the two byte orders a UUID travels in:
// RFC 4122 (big-endian, how SMBIOS UUIDs are printed and iPXE's ${uuid}
// reads) and the EFI GUID order (first three fields little-endian), which
// RFC 4578 suggests for option 97 and which PXE ROMs and iPXE put there.
func swapGUID(u string) string {
	f := strings.Split(u, "-")
	if len(f) != 5 || len(f[0]) != 8 || len(f[1]) != 4 || len(f[2]) != 4 {
		return ""
	}
	rev := func(h string) string {
		var b strings.Builder
		for i := len(h); i >= 2; i -= 2 {
			b.WriteString(h[i-2 : i])
		}
		return b.String()
	}
	return strings.Join([]string{rev(f[0]), rev(f[1]), rev(f[2]), f[3], f[4]}, "-")
}

// uuidMatches says whether u (from a URL) is the UUID this sighting carries,
// in either byte order.
func (sg sighting) uuidMatches(u string) bool {
	return sg.uuid != "" && (u == sg.uuid || u == swapGUID(sg.uuid))
}
