// Package dhcp is the node's DHCPv4 and DHCPv6 client. Clients publish
// leases through a callback and never touch the kernel themselves: the
// network reconciler (initagent/netconf) applies what they learn.
package dhcp

import (
	"net/netip"
	"time"
)

// Route is a route learned from DHCP (option 121 classless static routes, or
// the default route from option 3).
type Route struct {
	Dst     netip.Prefix `json:"dst"`
	Gateway netip.Addr   `json:"gateway"`
}

// Lease is what a DHCPv4 server granted, or what DHCPv6 gave (Family 6).
type Lease struct {
	Interface string       `json:"interface"`
	Family    int          `json:"family"`  // 4 or 6
	Address   netip.Prefix `json:"address"` // assigned address with the subnet's prefix length (invalid for v6 information-request)
	Server    netip.Addr   `json:"server"`  // server identifier
	// Router is the default gateway (option 3, first entry); invalid when none.
	Router    netip.Addr    `json:"router,omitzero"`
	Routes    []Route       `json:"routes,omitempty"` // option 121; when present, option 3 is ignored (RFC 3442)
	DNS       []netip.Addr  `json:"dns,omitempty"`
	Domain    string        `json:"domain,omitempty"`
	Search    []string      `json:"search,omitempty"`
	Hostname  string        `json:"hostname,omitempty"`
	MTU       int           `json:"mtu,omitempty"` // option 26; 0 when not given
	Acquired  time.Time     `json:"acquired"`
	LeaseTime time.Duration `json:"leaseTime"`
	RenewAt   time.Time     `json:"renewAt"`  // T1
	RebindAt  time.Time     `json:"rebindAt"` // T2
	ExpiresAt time.Time     `json:"expiresAt"`
}
