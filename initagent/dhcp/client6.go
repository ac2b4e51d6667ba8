package dhcp

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
)

// allServers6 is All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1), where a
// client sends every message unless a server offered unicast.
var allServers6 = netip.MustParseAddr("ff02::1:2")

// Config6 configures a DHCPv6 client. Every zero value is a usable default.
type Config6 struct {
	// Interface is the name of the interface to get a lease for. Required.
	Interface string
	// Stateless selects information-request mode (RFC 8415 §18.2.6): no
	// address, only DNS servers and the search list, refreshed after the
	// server's information refresh time. False: stateful mode, one address
	// in an IA_NA.
	Stateless bool
	// LeaseDir is the directory where a stateful lease is persisted as
	// JSON, in <Interface>.dhcp6.json; the next start asks for the same
	// address again (as a hint in SOLICIT). Empty: no persistence.
	// Stateless information is never persisted.
	LeaseDir string
	// DUID is the client identifier (option 1) in wire format. Empty: a
	// DUID-LL made of the interface's MAC (RFC 8415 §11.4), which is stable
	// across reboots of an immutable node without any storage.
	DUID []byte
	// IAID identifies the IA_NA (RFC 8415 §12). Zero: derived from the
	// interface name, so it is the same after every reboot.
	IAID uint32
	// Log receives the client's structured logs. Nil: discarded.
	Log *slog.Logger
	// OnLease is called with every bound or renewed lease, and in stateless
	// mode with every information reply. It runs on the goroutine that
	// called Run and delays the client while it runs. Nil: not called.
	OnLease func(Lease)
	// OnExpire is called with a stateful lease that was passed to OnLease
	// when it is no longer valid: it expired, the server no longer has the
	// binding, or it was released on stop. Never called in stateless mode.
	// Nil: not called.
	OnExpire func(Lease)
	// Timeout is the first retransmission timeout of an exchange; it
	// doubles after each unanswered try. Zero: 1s (SOL_TIMEOUT,
	// REQ_TIMEOUT and INF_TIMEOUT of RFC 8415 §7.6).
	Timeout time.Duration
	// Retries is how many times a message is sent before the exchange
	// fails. Zero: 5 (1+2+4+8+16 s with the default Timeout).
	Retries int
	// MinBackoff and MaxBackoff bound the jittered wait between failed
	// attempts to get a lease, which doubles after each failure.
	// Zero: 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// KeepLease makes stopping neither release the lease nor forget its
	// persisted copy. False: on stop, send Release and delete the
	// persisted lease.
	KeepLease bool
}

// Client6 is a DHCPv6 client for one interface. Create it with NewClient6.
type Client6 struct {
	cfg   Config6
	t     timing
	log   *slog.Logger
	store store
	iaid  [4]byte

	running atomic.Bool
	st      status
}

// NewClient6 checks cfg and returns a client; Run starts it.
func NewClient6(cfg Config6) (*Client6, error) {
	if err := validIfname(cfg.Interface); err != nil {
		return nil, fmt.Errorf("dhcp6: %w", err)
	}
	t, err := newTiming(cfg.Timeout, cfg.Retries, cfg.MinBackoff, cfg.MaxBackoff, time.Second, 5)
	if err != nil {
		return nil, fmt.Errorf("dhcp6 %s: %w", cfg.Interface, err)
	}
	if len(cfg.DUID) > 0 {
		if _, err := dhcpv6.DUIDFromBytes(cfg.DUID); err != nil {
			return nil, fmt.Errorf("dhcp6 %s: invalid DUID: %w", cfg.Interface, err)
		}
	}
	log := discardLogger(cfg.Log).With("iface", cfg.Interface, "family", 6)
	c := &Client6{
		cfg:   cfg,
		t:     t,
		log:   log,
		store: store{dir: cfg.LeaseDir, iface: cfg.Interface, family: 6, log: log},
	}
	iaid := cfg.IAID
	if iaid == 0 {
		h := fnv.New32a()
		h.Write([]byte(cfg.Interface))
		iaid = h.Sum32()
	}
	c.iaid = [4]byte{byte(iaid >> 24), byte(iaid >> 16), byte(iaid >> 8), byte(iaid)}
	c.st.s = Status{Interface: cfg.Interface, Family: 6, State: StateStopped, Changed: time.Now()}
	return c, nil
}

// Status returns a snapshot of the client's state and lease.
func (c *Client6) Status() Status { return c.st.get() }

func (c *Client6) errorf(format string, args ...any) error {
	return fmt.Errorf("dhcp6 %s: "+format, append([]any{c.cfg.Interface}, args...)...)
}

// errLost is returned by extend when the server says it no longer has
// the binding (NoBinding, or the address with a zero valid lifetime).
var errLost = errors.New("server no longer has the binding")

// Run gets a lease (or, with Stateless, the configuration) and keeps it
// until ctx is cancelled: SOLICIT, ADVERTISE, REQUEST, REPLY, then RENEW at
// T1 and REBIND at T2; a lost lease is reported to OnExpire and the client
// starts over. Failures are logged and retried with backoff. When ctx is
// cancelled Run releases a stateful lease (unless KeepLease) and returns
// nil. Run must not be called twice at once.
func (c *Client6) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return c.errorf("Run called while already running")
	}
	defer c.running.Store(false)
	defer c.st.set(StateStopped, nil)
	if c.cfg.Stateless {
		c.runStateless(ctx)
		return nil
	}

	bo := backoff{min: c.t.minBackoff, max: c.t.maxBackoff}
	var hint netip.Addr
	if p, ok := c.store.load(time.Now()); ok {
		hint = p.Address.Addr()
		c.log.Info("asking for the persisted address again", "address", hint)
	}
	for ctx.Err() == nil {
		c.st.set(StateInit, nil)
		l, err := c.acquire(ctx, hint)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			c.st.setError(err)
			d := bo.next()
			c.log.Warn("no lease", "err", err, "retryIn", d.Round(time.Millisecond))
			if sleep(ctx, d) != nil {
				break
			}
			continue
		}
		bo.reset()
		hint = l.Address.Addr()
		c.publish(l)
		kept, err := c.keep(ctx, l)
		if err == nil {
			continue
		}
		c.stop(kept)
		break
	}
	return nil
}

// runStateless asks for configuration with Information-request and asks
// again after the information refresh time.
func (c *Client6) runStateless(ctx context.Context) {
	bo := backoff{min: c.t.minBackoff, max: c.t.maxBackoff}
	for ctx.Err() == nil {
		l, err := c.inform(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.st.setError(err)
			d := bo.next()
			c.log.Warn("no information reply", "err", err, "retryIn", d.Round(time.Millisecond))
			if sleep(ctx, d) != nil {
				return
			}
			continue
		}
		bo.reset()
		c.st.setError(nil)
		c.st.set(StateBound, &l)
		c.log.Info("configuration received", "server", l.Server, "dns", l.DNS, "search", l.Search,
			"refreshAt", l.RenewAt.Format(time.RFC3339))
		if c.cfg.OnLease != nil {
			c.cfg.OnLease(l)
		}
		if sleep(ctx, time.Until(l.RenewAt)) != nil {
			return
		}
	}
}

func (c *Client6) publish(l Lease) {
	c.st.setError(nil)
	c.st.set(StateBound, &l)
	c.log.Info("lease bound", "address", l.Address, "server", l.Server, "leaseTime", l.LeaseTime,
		"renewAt", l.RenewAt.Format(time.RFC3339))
	if err := c.store.save(l); err != nil {
		c.log.Warn("cannot persist lease", "err", err)
	}
	if c.cfg.OnLease != nil {
		c.cfg.OnLease(l)
	}
}

func (c *Client6) expire(l Lease, why string) {
	c.log.Warn("lease lost", "address", l.Address, "reason", why)
	c.st.set(StateInit, nil)
	if err := c.store.remove(); err != nil {
		c.log.Warn("cannot forget persisted lease", "err", err)
	}
	if c.cfg.OnExpire != nil {
		c.cfg.OnExpire(l)
	}
}

// keep holds lease l: RENEW at T1 and REBIND at T2 (RFC 8415 §18.2.4,
// §18.2.5). It returns a nil error once the lease is lost, and ctx's error
// with the lease still held when ctx is cancelled.
func (c *Client6) keep(ctx context.Context, l Lease) (Lease, error) {
	for {
		c.st.set(StateBound, &l)
		if err := sleep(ctx, time.Until(l.RenewAt)); err != nil {
			return l, err
		}
		for {
			now := time.Now()
			if !now.Before(l.ExpiresAt) {
				c.expire(l, "valid lifetime ended")
				return Lease{}, nil
			}
			rebind := !now.Before(l.RebindAt)
			end := l.RebindAt
			if rebind {
				end = l.ExpiresAt
				c.st.setState(StateRebinding)
			} else {
				c.st.setState(StateRenewing)
			}
			xctx, cancel := context.WithDeadline(ctx, end)
			nl, err := c.extend(xctx, l, rebind)
			cancel()
			if ctx.Err() != nil {
				return l, ctx.Err()
			}
			if err == nil {
				if nl.Address != l.Address {
					c.expire(l, fmt.Sprintf("server moved the binding to %s", nl.Address))
				}
				l = nl
				c.publish(l)
				break
			}
			if errors.Is(err, errLost) {
				c.expire(l, err.Error())
				return Lease{}, nil
			}
			c.st.setError(err)
			d := extendRetryDelay(time.Until(end))
			c.log.Warn("cannot extend lease", "rebinding", rebind, "err", err, "retryIn", d.Round(time.Second))
			if err := sleep(ctx, d); err != nil {
				return l, err
			}
		}
	}
}

func (c *Client6) stop(l Lease) {
	if !l.Address.IsValid() {
		return
	}
	if c.cfg.KeepLease {
		c.log.Info("stopping; keeping the lease for the next start", "address", l.Address)
		return
	}
	// ctx of Run is done: Release gets a short budget of its own
	// (RFC 8415 §18.2.7 allows giving up on it).
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.release(ctx, l); err != nil {
		c.log.Warn("Release not acknowledged", "address", l.Address, "err", err)
	} else {
		c.log.Info("lease released", "address", l.Address)
	}
	if err := c.store.remove(); err != nil {
		c.log.Warn("cannot forget persisted lease", "err", err)
	}
	if c.cfg.OnExpire != nil {
		c.cfg.OnExpire(l)
	}
}

// conn6 is a socket bound to the interface's link-local address and port
// 546, with what the messages need.
type conn6 struct {
	*net.UDPConn
	duid dhcpv6.DUID
	dest *net.UDPAddr // All_DHCP_Relay_Agents_and_Servers on the interface
}

// open binds a socket for one exchange. Binding fails while the link-local
// address is tentative (duplicate address detection), which Run retries.
func (c *Client6) open() (*conn6, error) {
	ifc, err := interfaceByName(c.cfg.Interface)
	if err != nil {
		return nil, err
	}
	ll, err := linkLocal(ifc)
	if err != nil {
		return nil, err
	}
	uc, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ll, dhcpv6.DefaultClientPort)))
	if err != nil {
		return nil, fmt.Errorf("open UDP socket on [%s]:%d: %w", ll, dhcpv6.DefaultClientPort, err)
	}
	var duid dhcpv6.DUID
	if len(c.cfg.DUID) > 0 {
		duid, err = dhcpv6.DUIDFromBytes(c.cfg.DUID)
		if err != nil {
			uc.Close()
			return nil, fmt.Errorf("invalid DUID: %w", err)
		}
	} else {
		duid = &dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: ifc.HardwareAddr}
	}
	return &conn6{
		UDPConn: uc,
		duid:    duid,
		dest:    &net.UDPAddr{IP: allServers6.AsSlice(), Port: dhcpv6.DefaultServerPort, Zone: ifc.Name},
	}, nil
}

// newMessage builds a message of type t with the options every client
// message carries (RFC 8415 §18.2: Client Identifier, Elapsed Time, and an
// Option Request option except in Release).
func (c *Client6) newMessage(cn *conn6, t dhcpv6.MessageType, extra ...dhcpv6.Option) (*dhcpv6.Message, error) {
	m, err := dhcpv6.NewMessage()
	if err != nil {
		return nil, err
	}
	m.MessageType = t
	m.AddOption(dhcpv6.OptClientID(cn.duid))
	if t != dhcpv6.MessageTypeRelease {
		oro := []dhcpv6.OptionCode{dhcpv6.OptionDNSRecursiveNameServer, dhcpv6.OptionDomainSearchList}
		if t == dhcpv6.MessageTypeInformationRequest {
			oro = append(oro, dhcpv6.OptionInformationRefreshTime)
		}
		m.AddOption(dhcpv6.OptRequestedOption(oro...))
	}
	m.AddOption(dhcpv6.OptElapsedTime(0))
	for _, o := range extra {
		m.AddOption(o)
	}
	return m, nil
}

// iana builds our IA_NA, holding addr when it is valid. Lifetimes and T1/T2
// are zero: the server chooses (RFC 8415 §21.4, §21.6).
func (c *Client6) iana(addr netip.Addr) *dhcpv6.OptIANA {
	ia := &dhcpv6.OptIANA{IaId: c.iaid}
	if addr.IsValid() {
		ia.Options.Add(&dhcpv6.OptIAAddress{IPv6Addr: addr.AsSlice()})
	}
	return ia
}

// exchange sends m to all servers and waits for a message with m's
// transaction ID, our client ID, and that accept takes. It retransmits with
// RFC 8415 §15's doubling timeout (with ±10% jitter) and updates Elapsed
// Time on each try.
func (c *Client6) exchange(ctx context.Context, cn *conn6, m *dhcpv6.Message, retries int, accept func(*dhcpv6.Message) bool) (*dhcpv6.Message, netip.Addr, error) {
	// Cancelling ctx makes a blocked read return at once.
	stop := context.AfterFunc(ctx, func() { cn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	start := time.Now()
	rt := c.t.timeout
	buf := make([]byte, 64<<10)
	for try := 0; try < retries; try++ {
		// Elapsed Time is in hundredths of a second, at most 0xffff.
		m.UpdateOption(dhcpv6.OptElapsedTime(min(time.Since(start), 65535*10*time.Millisecond)))
		if _, err := cn.WriteTo(m.ToBytes(), cn.dest); err != nil {
			return nil, netip.Addr{}, fmt.Errorf("send %s: %w", m.MessageType, err)
		}
		c.log.Debug("sent", "type", m.MessageType.String(), "xid", m.TransactionID.String(), "try", try+1)
		deadline := time.Now().Add(rt + time.Duration((rand.Float64()*0.2-0.1)*float64(rt)))
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		for {
			if err := cn.SetReadDeadline(deadline); err != nil {
				return nil, netip.Addr{}, err
			}
			if err := ctx.Err(); err != nil { // after SetReadDeadline: see AfterFunc
				return nil, netip.Addr{}, err
			}
			n, from, err := cn.ReadFromUDPAddrPort(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return nil, netip.Addr{}, fmt.Errorf("receive: %w", err)
			}
			reply, err := dhcpv6.MessageFromBytes(buf[:n])
			if err != nil || reply.TransactionID != m.TransactionID {
				continue
			}
			if cid := reply.Options.ClientID(); cid == nil || !cid.Equal(cn.duid) {
				continue
			}
			if !accept(reply) {
				c.log.Debug("ignored", "type", reply.MessageType.String(), "from", from.Addr())
				continue
			}
			c.log.Debug("received", "type", reply.MessageType.String(), "xid", reply.TransactionID.String(), "from", from.Addr())
			return reply, from.Addr(), nil
		}
		if err := ctx.Err(); err != nil {
			return nil, netip.Addr{}, err
		}
		rt *= 2
	}
	return nil, netip.Addr{}, fmt.Errorf("no %s answer after %d tries", m.MessageType, retries)
}

func isReply(m *dhcpv6.Message) bool { return m.MessageType == dhcpv6.MessageTypeReply }

// acquire runs SOLICIT, ADVERTISE, REQUEST, REPLY (RFC 8415 §18.2.1,
// §18.2.2). It takes the first usable Advertise instead of collecting them
// for a while: nodes have one DHCPv6 server per link (or a redundant pair
// with the same configuration).
func (c *Client6) acquire(ctx context.Context, hint netip.Addr) (Lease, error) {
	cn, err := c.open()
	if err != nil {
		return Lease{}, c.errorf("%w", err)
	}
	defer cn.Close()
	sol, err := c.newMessage(cn, dhcpv6.MessageTypeSolicit, c.iana(hint))
	if err != nil {
		return Lease{}, c.errorf("build Solicit: %w", err)
	}
	adv, _, err := c.exchange(ctx, cn, sol, c.t.retries, func(m *dhcpv6.Message) bool {
		// RFC 8415 §18.2.9: ignore an Advertise without addresses.
		if m.MessageType != dhcpv6.MessageTypeAdvertise || m.Options.ServerID() == nil ||
			checkStatus("reply", m.Options.Status()) != nil {
			return false
		}
		ia := findIANA(m, c.iaid)
		return ia != nil && checkStatus("IA_NA", ia.Options.Status()) == nil && usableAddr(ia) != nil
	})
	if err != nil {
		return Lease{}, c.errorf("solicit: %w", err)
	}
	offered := usableAddr(findIANA(adv, c.iaid)).IPv6Addr
	c.log.Debug("advertise", "address", offered)
	req, err := c.newMessage(cn, dhcpv6.MessageTypeRequest,
		dhcpv6.OptServerID(adv.Options.ServerID()), c.iana(netip.AddrFrom16([16]byte(offered.To16()))))
	if err != nil {
		return Lease{}, c.errorf("build Request: %w", err)
	}
	reply, from, err := c.exchange(ctx, cn, req, c.t.retries, isReply)
	if err != nil {
		return Lease{}, c.errorf("request %s: %w", offered, err)
	}
	l, err := leaseFromReply6(c.cfg.Interface, reply, &c.iaid, from, time.Now())
	if err != nil {
		return Lease{}, c.errorf("request %s: %w", offered, err)
	}
	return l, nil
}

// extend sends RENEW (to the server that granted l) or REBIND (to any) for
// l's address and returns the extended lease.
func (c *Client6) extend(ctx context.Context, l Lease, rebind bool) (Lease, error) {
	op := "renew"
	if rebind {
		op = "rebind"
	}
	cn, err := c.open()
	if err != nil {
		return Lease{}, c.errorf("%s: %w", op, err)
	}
	defer cn.Close()
	opts := []dhcpv6.Option{c.iana(l.Address.Addr())}
	t := dhcpv6.MessageTypeRebind
	if !rebind {
		t = dhcpv6.MessageTypeRenew
		sid, err := dhcpv6.DUIDFromBytes(l.ServerID)
		if err != nil {
			return Lease{}, c.errorf("%s: lease has no valid server DUID: %w", op, err)
		}
		opts = append(opts, dhcpv6.OptServerID(sid))
	}
	m, err := c.newMessage(cn, t, opts...)
	if err != nil {
		return Lease{}, c.errorf("%s: build message: %w", op, err)
	}
	reply, from, err := c.exchange(ctx, cn, m, c.t.retries, isReply)
	if err != nil {
		return Lease{}, c.errorf("%s %s: %w", op, l.Address.Addr(), err)
	}
	nl, err := leaseFromReply6(c.cfg.Interface, reply, &c.iaid, from, time.Now())
	switch {
	case isStatus(err, iana.StatusNoBinding):
		return Lease{}, c.errorf("%s %s: %w (%v)", op, l.Address.Addr(), errLost, err)
	case err != nil && findIANA(reply, c.iaid) != nil && usableAddr(findIANA(reply, c.iaid)) == nil:
		// The server answered with our address at a zero valid lifetime.
		return Lease{}, c.errorf("%s %s: %w (%v)", op, l.Address.Addr(), errLost, err)
	case err != nil:
		return Lease{}, c.errorf("%s %s: %w", op, l.Address.Addr(), err)
	}
	return nl, nil
}

// release sends RELEASE for l and waits for the server's Reply.
func (c *Client6) release(ctx context.Context, l Lease) error {
	cn, err := c.open()
	if err != nil {
		return c.errorf("release: %w", err)
	}
	defer cn.Close()
	sid, err := dhcpv6.DUIDFromBytes(l.ServerID)
	if err != nil {
		return c.errorf("release: lease has no valid server DUID: %w", err)
	}
	m, err := c.newMessage(cn, dhcpv6.MessageTypeRelease, dhcpv6.OptServerID(sid), c.iana(l.Address.Addr()))
	if err != nil {
		return c.errorf("release: build message: %w", err)
	}
	if _, _, err := c.exchange(ctx, cn, m, 2, isReply); err != nil {
		return c.errorf("release %s: %w", l.Address.Addr(), err)
	}
	return nil
}

// inform runs INFORMATION-REQUEST, REPLY (RFC 8415 §18.2.6).
func (c *Client6) inform(ctx context.Context) (Lease, error) {
	cn, err := c.open()
	if err != nil {
		return Lease{}, c.errorf("%w", err)
	}
	defer cn.Close()
	m, err := c.newMessage(cn, dhcpv6.MessageTypeInformationRequest)
	if err != nil {
		return Lease{}, c.errorf("build Information-request: %w", err)
	}
	reply, from, err := c.exchange(ctx, cn, m, c.t.retries, isReply)
	if err != nil {
		return Lease{}, c.errorf("information-request: %w", err)
	}
	l, err := leaseFromReply6(c.cfg.Interface, reply, nil, from, time.Now())
	if err != nil {
		return Lease{}, c.errorf("information-request: %w", err)
	}
	return l, nil
}
