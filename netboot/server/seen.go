package server

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// seen remembers which IPv4 address each MAC had in DHCP: the address this
// server leased (full mode) or the one the client asked the site's server
// for or used as ciaddr (proxy mode). It is what config delivery checks.
type seen struct {
	mu    sync.Mutex
	byMAC map[string]sighting
	byIP  map[netip.Addr]string
}

type sighting struct {
	ip     netip.Addr
	how    string // "lease", "dhcp-request", "ciaddr", "proxy-request"
	uuid   string
	arch   int
	when   time.Time
	client string // "iPXE", "PXE", "other"
}

func newSeen() *seen {
	return &seen{byMAC: map[string]sighting{}, byIP: map[netip.Addr]string{}}
}

// record notes that mac uses ip. A zero ip only refreshes the other fields.
func (s *seen) record(mac net.HardwareAddr, ip netip.Addr, how string, uuid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := mac.String()
	old, had := s.byMAC[key]
	sg := old
	sg.when = time.Now()
	if uuid != "" {
		sg.uuid = uuid
	}
	if ip.IsValid() && !ip.IsUnspecified() {
		if had && old.ip.IsValid() && s.byIP[old.ip] == key {
			delete(s.byIP, old.ip)
		}
		// The address moved to this MAC: the old owner no longer has it.
		if prev, ok := s.byIP[ip]; ok && prev != key {
			p := s.byMAC[prev]
			p.ip = netip.Addr{}
			s.byMAC[prev] = p
		}
		sg.ip, sg.how = ip, how
		s.byIP[ip] = key
	}
	s.byMAC[key] = sg
}

// forget drops the address of mac (DHCP release).
func (s *seen) forget(mac net.HardwareAddr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := mac.String()
	if sg, ok := s.byMAC[key]; ok && sg.ip.IsValid() {
		if s.byIP[sg.ip] == key {
			delete(s.byIP, sg.ip)
		}
		sg.ip = netip.Addr{}
		s.byMAC[key] = sg
	}
}

func (s *seen) ipOf(mac net.HardwareAddr) (sighting, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sg, ok := s.byMAC[mac.String()]
	return sg, ok && sg.ip.IsValid()
}

// macOf returns the MAC that had ip in DHCP, or "".
func (s *seen) macOf(ip netip.Addr) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byIP[ip.Unmap()]
}
