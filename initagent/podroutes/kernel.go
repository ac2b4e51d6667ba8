package podroutes

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/runtime"
)

// Protocol marks the pod routes (rtm_protocol), so the daemon tells its
// own routes from everyone else's, also those a previous run left. 200 is
// in no list: rtnetlink.h assigns up to 192 (RTPROT_EIGRP), iproute2's
// rt_protos names no more, Calico uses 80, OVN 84, Cilium 98, and ballast's
// network config (netconf) 186.
const Protocol = 200

// Route metrics as the kernel fills them in when none is given.
const (
	metric4 = 0
	metric6 = 1024
)

// subnets lists this node's connected subnets: every address that is not a
// host address, with its interface.
func (d *Daemon) subnets() ([]subnet, error) {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return d.h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	links, err := retryDump(d.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	var out []subnet
	for _, a := range addrs {
		l, ok := byIndex[a.LinkIndex]
		if !ok || l.Attrs().Flags&net.FlagLoopback != 0 || a.Scope == unix.RT_SCOPE_HOST {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		out = append(out, subnet{Prefix: p.Masked(), Addr: p.Addr(), Link: a.LinkIndex, Dev: l.Attrs().Name,
			Up: l.Attrs().Flags&net.FlagUp != 0})
	}
	return out, nil
}

// reconcile makes the kernel's pod routes match the known nodes and
// publishes the result in the status.
func (d *Daemon) reconcile(ctx context.Context) {
	routes, skips, err := d.apply()
	for _, s := range skips {
		key := s.Node + "|" + s.PodCIDR + "|" + s.Reason
		if d.logged[key] {
			continue
		}
		if s.warn {
			d.Log.Warn("pod route skipped", "node", s.Node, "podCIDR", s.PodCIDR, "reason", s.Reason)
		} else {
			d.Log.Info("pod route skipped", "node", s.Node, "podCIDR", s.PodCIDR, "reason", s.Reason)
		}
	}
	clear(d.logged)
	for _, s := range skips {
		d.logged[s.Node+"|"+s.PodCIDR+"|"+s.Reason] = true
	}
	if err != nil && ctx.Err() == nil {
		d.Log.Error("pod routes", "err", err)
	}
	d.update(func(st *Status) {
		st.Nodes = len(d.nodes)
		st.Routes = routes
		st.Skipped = st.Skipped[:0:0]
		for _, s := range skips {
			st.Skipped = append(st.Skipped, SkipStatus{Node: s.Node, PodCIDR: s.PodCIDR, Reason: s.Reason})
		}
		st.RouteError = ""
		if err != nil {
			st.RouteError = err.Error()
		}
	})
}

// apply changes the kernel's pod routes and returns the ones it has after.
// Routes of other protocols are never changed: a pod CIDR that already has
// one is skipped.
func (d *Daemon) apply() ([]RouteStatus, []skip, error) {
	subnets, err := d.subnets()
	if err != nil {
		return d.Status().Routes, nil, err
	}
	nodes := make([]runtime.Node, 0, len(d.nodes))
	for _, n := range d.nodes {
		nodes = append(nodes, n)
	}
	want, skips := plan(d.NodeName, nodes, subnets)

	have, err := retryDump(func() ([]netlink.Route, error) {
		return d.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return d.Status().Routes, skips, fmt.Errorf("list routes: %w", err)
	}
	var ours []netlink.Route
	foreign := map[netip.Prefix]netlink.Route{}
	for _, r := range have {
		p, ok := prefixOf(r)
		if !ok {
			continue
		}
		if r.Protocol == Protocol {
			ours = append(ours, r)
		} else if _, seen := foreign[p]; !seen {
			foreign[p] = r
		}
	}
	wantBy := map[netip.Prefix]route{}
	for _, w := range want {
		if f, ok := foreign[w.PodCIDR]; ok {
			skips = append(skips, skip{Node: w.Node, PodCIDR: w.PodCIDR.String(), warn: true,
				Reason: fmt.Sprintf("a route to it exists already (%s); it is left to its owner", d.describe(f))})
			continue
		}
		wantBy[w.PodCIDR] = w
	}
	// Who each route was for, to name the node in the log when it goes.
	prevNode := map[string]string{}
	for _, r := range d.Status().Routes {
		prevNode[r.PodCIDR] = r.Node
	}

	var errs []error
	var out []RouteStatus
	installed := map[netip.Prefix]bool{}
	for _, r := range ours {
		p, _ := prefixOf(r)
		w, wanted := wantBy[p]
		switch {
		case wanted && !installed[p] && matches(r, w):
			installed[p] = true
			out = append(out, w.status())
		case wanted && !installed[p] && r.Priority == metricOf(p):
			// Same key: replace in place, so traffic never lacks a route.
			nr := toNetlink(w)
			if err := d.h.RouteReplace(&nr); err != nil {
				errs = append(errs, fmt.Errorf("update route %s via %s dev %s: %w", p, w.Via, w.Dev, err))
				continue
			}
			installed[p] = true
			out = append(out, w.status())
			d.Log.Info("pod route updated", "node", w.Node, "podCIDR", p.String(), "via", w.Via.String(), "dev", w.Dev,
				"was", d.describe(r))
		default:
			if err := d.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("remove route %s (%s): %w", p, d.describe(r), err))
				continue
			}
			d.Log.Info("pod route removed", "node", prevNode[p.String()], "podCIDR", p.String(), "was", d.describe(r))
		}
	}
	for _, w := range want {
		if _, ok := wantBy[w.PodCIDR]; !ok || installed[w.PodCIDR] {
			continue
		}
		nr := toNetlink(w)
		if err := d.h.RouteAdd(&nr); err != nil {
			if errors.Is(err, unix.EEXIST) {
				skips = append(skips, skip{Node: w.Node, PodCIDR: w.PodCIDR.String(), warn: true,
					Reason: "a route to it with the same metric appeared meanwhile; it is left to its owner"})
				continue
			}
			errs = append(errs, fmt.Errorf("add route %s via %s dev %s for node %s: %w", w.PodCIDR, w.Via, w.Dev, w.Node, err))
			continue
		}
		installed[w.PodCIDR] = true
		out = append(out, w.status())
		d.Log.Info("pod route added", "node", w.Node, "podCIDR", w.PodCIDR.String(), "via", w.Via.String(), "dev", w.Dev)
	}
	slices.SortFunc(out, func(a, b RouteStatus) int {
		return strings.Compare(a.Node+" "+a.PodCIDR, b.Node+" "+b.PodCIDR)
	})
	return out, skips, errors.Join(errs...)
}

func (w route) status() RouteStatus {
	return RouteStatus{Node: w.Node, PodCIDR: w.PodCIDR.String(), Via: w.Via.String(), Dev: w.Dev}
}

func metricOf(p netip.Prefix) int {
	if p.Addr().Is4() {
		return metric4
	}
	return metric6
}

func toNetlink(w route) netlink.Route {
	r := netlink.Route{
		LinkIndex: w.Link,
		Dst:       &net.IPNet{IP: w.PodCIDR.Addr().AsSlice(), Mask: net.CIDRMask(w.PodCIDR.Bits(), w.PodCIDR.Addr().BitLen())},
		Gw:        w.Via.AsSlice(),
		Protocol:  Protocol,
		Table:     unix.RT_TABLE_MAIN,
		Scope:     netlink.SCOPE_UNIVERSE,
		Priority:  metricOf(w.PodCIDR),
		Family:    netlink.FAMILY_V4,
	}
	if w.PodCIDR.Addr().Is6() {
		r.Family = netlink.FAMILY_V6
	}
	return r
}

func matches(r netlink.Route, w route) bool {
	gw, ok := netip.AddrFromSlice(r.Gw)
	return ok && gw.Unmap() == w.Via && r.LinkIndex == w.Link && r.Priority == metricOf(w.PodCIDR) && len(r.MultiPath) == 0
}

func prefixOf(r netlink.Route) (netip.Prefix, bool) {
	if r.Dst == nil {
		return netip.Prefix{}, false // default routes are never pod routes
	}
	ip, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones).Masked(), true
}

// describe names a route for logs: its protocol, gateway and interface.
func (d *Daemon) describe(r netlink.Route) string {
	var b strings.Builder
	fmt.Fprintf(&b, "protocol %s", r.Protocol)
	if r.Gw != nil {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	if l, err := d.h.LinkByIndex(r.LinkIndex); err == nil {
		fmt.Fprintf(&b, " dev %s", l.Attrs().Name)
	}
	return b.String()
}

// retryDump repeats a netlink dump the kernel reports as interrupted by a
// concurrent change (NLM_F_DUMP_INTR), a few times.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 4 {
			return v, err
		}
	}
}
