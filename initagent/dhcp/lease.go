// Package dhcp is the node's DHCPv4 and DHCPv6 client. Clients publish
// leases through a callback and never touch the kernel themselves: the
// network reconciler (initagent/netconf) applies what they learn.
//
// A client is created from a plain config struct whose zero values are
// documented defaults, and runs until its context is cancelled:
//
//	c, err := dhcp.NewClient4(dhcp.Config4{
//		Interface: "eth0",
//		LeaseDir:  "/var/lib/ballast/dhcp",
//		Hostname:  "node-1",
//		Log:       log,
//		OnLease:   func(l dhcp.Lease) { desired.SetDHCP(l) },   // bound or renewed
//		OnExpire:  func(l dhcp.Lease) { desired.ClearDHCP(l) },   // lost, expired or released
//	})
//	if err != nil {
//		return err
//	}
//	return c.Run(ctx) // returns nil once ctx is cancelled and the lease is released
//
// Client6 does the same for DHCPv6 (stateful IA_NA, or stateless
// information-request when Config6.Stateless is set).
//
// # Sockets and network namespaces
//
// Run opens every socket on the goroutine that called it (exchanges open
// and close their sockets; nothing is held open while bound), and it never
// starts goroutines that open sockets. A caller that wants a client in
// another network namespace therefore locks the OS thread and switches the
// thread's namespace before calling Run; the tests do exactly that.
//
// Before the address is configured, DHCPv4 uses a raw packet socket (as
// nclient4 does), so it works on an interface with no address at all. Once
// the leased address is on the interface (netconf applied it), renewals are
// unicast to the server through an ordinary UDP socket bound to the
// interface, as RFC 2131 §4.4.5 asks. If the address is still not on the
// interface at T1, the renewal falls back to a broadcast INIT-REBOOT style
// request: the server answers a request that carries ciaddr by unicasting to
// ciaddr, which would never reach a host that does not own the address.
package dhcp

import (
	"net/netip"
	"time"
)

// Route is a route learned from DHCP (option 121 classless static routes, or
// the default route from option 3).
type Route struct {
	Dst netip.Prefix `json:"dst"`
	// Gateway is the next hop; invalid for an on-link route (gateway
	// 0.0.0.0 in option 121, RFC 3442 §3).
	Gateway netip.Addr `json:"gateway"`
}

// Lease is what a DHCPv4 server granted, or what DHCPv6 gave (Family 6).
type Lease struct {
	Interface string       `json:"interface"`
	Family    int          `json:"family"`  // 4 or 6
	Address   netip.Prefix `json:"address"` // assigned address with the subnet's prefix length (invalid for v6 information-request)
	// Server is the server identifier (option 54) for DHCPv4; for DHCPv6,
	// whose server identifier is a DUID (see ServerID), it is the address
	// the server's reply came from (usually link-local).
	Server netip.Addr `json:"server"`
	// ServerID is the DHCPv6 server's DUID (option 2); empty for DHCPv4.
	ServerID []byte `json:"serverID,omitempty"`
	// Router is the default gateway (option 3, first entry); invalid when none.
	// It is also invalid when option 121 is present: RFC 3442 §2 says the
	// client MUST then ignore option 3.
	Router netip.Addr `json:"router,omitzero"`
	// Routes are the routes to install: the option 121 routes when the
	// server sent option 121, otherwise the default route via Router.
	Routes   []Route      `json:"routes,omitempty"`
	DNS      []netip.Addr `json:"dns,omitempty"`
	Domain   string       `json:"domain,omitempty"`
	Search   []string     `json:"search,omitempty"`
	Hostname string       `json:"hostname,omitempty"`
	MTU      int          `json:"mtu,omitempty"` // option 26; 0 when not given
	Acquired time.Time    `json:"acquired"`
	// LeaseTime is the lease time (option 51), or the valid lifetime of the
	// DHCPv6 address; 0 for DHCPv6 information-request.
	LeaseTime time.Duration `json:"leaseTime"`
	RenewAt   time.Time     `json:"renewAt"`  // T1; for information-request, when the information is refreshed
	RebindAt  time.Time     `json:"rebindAt"` // T2
	ExpiresAt time.Time     `json:"expiresAt"`
	// PreferredUntil is the end of the DHCPv6 address's preferred lifetime
	// (after it, the address is deprecated); zero for DHCPv4.
	PreferredUntil time.Time `json:"preferredUntil,omitzero"`
}
