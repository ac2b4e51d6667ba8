package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

// UDP ports of DHCPv4 (RFC 2131 §4.1).
const (
	clientPort4 = 68
	serverPort4 = 67
)

// Config4 configures a DHCPv4 client. Every zero value is a usable default.
type Config4 struct {
	// Interface is the name of the interface to get a lease for. Required.
	Interface string
	// LeaseDir is the directory where the lease is persisted as JSON, in
	// <Interface>.dhcp4.json, so that the next start asks for the same
	// address with INIT-REBOOT. Empty: no persistence.
	LeaseDir string
	// Hostname is sent as option 12. Empty: not sent.
	Hostname string
	// ClientID is sent as option 61 (RFC 2132 §9.14: a type byte, e.g. 1
	// followed by the MAC, or 255 followed by an RFC 4361 IAID and DUID).
	// Empty: not sent, and the server identifies the client by its MAC.
	ClientID []byte
	// Log receives the client's structured logs. Nil: discarded.
	Log *slog.Logger
	// OnLease is called with every bound or renewed lease. It runs on the
	// goroutine that called Run and delays the client while it runs, so it
	// should hand the lease over and return. Nil: not called.
	OnLease func(Lease)
	// OnExpire is called with a lease that was passed to OnLease when it is
	// no longer valid: it expired, the server refused to extend it
	// (DHCPNAK), a renewal gave another address, or it was released on
	// stop. Nil: not called.
	OnExpire func(Lease)
	// Timeout is the first retransmission timeout of an exchange; it
	// doubles after each unanswered try (RFC 2131 §4.1). Zero: 4s.
	Timeout time.Duration
	// Retries is how many times a message is sent before the exchange
	// fails. Zero: 4 (4+8+16+32 s, about a minute with the default Timeout).
	Retries int
	// MinBackoff and MaxBackoff bound the jittered wait between failed
	// attempts to get a lease, which doubles after each failure.
	// Zero: 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// KeepLease makes stopping neither release the lease nor forget its
	// persisted copy, so that the next start (after a reboot, say) gets the
	// same address back with INIT-REBOOT. False: on stop, send DHCPRELEASE
	// and delete the persisted lease.
	KeepLease bool
}

// Client4 is a DHCPv4 client for one interface. Create it with NewClient4.
type Client4 struct {
	cfg   Config4
	t     timing
	log   *slog.Logger
	store store

	running atomic.Bool
	st      status
}

// NewClient4 checks cfg and returns a client; Run starts it.
func NewClient4(cfg Config4) (*Client4, error) {
	if err := validIfname(cfg.Interface); err != nil {
		return nil, fmt.Errorf("dhcp4: %w", err)
	}
	t, err := newTiming(cfg.Timeout, cfg.Retries, cfg.MinBackoff, cfg.MaxBackoff, 4*time.Second, 4)
	if err != nil {
		return nil, fmt.Errorf("dhcp4 %s: %w", cfg.Interface, err)
	}
	if len(cfg.Hostname) > 255 {
		return nil, fmt.Errorf("dhcp4 %s: Hostname is longer than an option can carry (255 bytes)", cfg.Interface)
	}
	if n := len(cfg.ClientID); n == 1 || n > 255 {
		return nil, fmt.Errorf("dhcp4 %s: ClientID must be 2 to 255 bytes (type and identifier), got %d", cfg.Interface, n)
	}
	log := discardLogger(cfg.Log).With("iface", cfg.Interface, "family", 4)
	c := &Client4{
		cfg:   cfg,
		t:     t,
		log:   log,
		store: store{dir: cfg.LeaseDir, iface: cfg.Interface, family: 4, log: log},
	}
	c.st.s = Status{Interface: cfg.Interface, Family: 4, State: StateStopped, Changed: time.Now()}
	return c, nil
}

// Status returns a snapshot of the client's state and lease.
func (c *Client4) Status() Status { return c.st.get() }

func (c *Client4) errorf(format string, args ...any) error {
	return fmt.Errorf("dhcp4 %s: "+format, append([]any{c.cfg.Interface}, args...)...)
}

// errNak is returned by exchanges that the server answered with DHCPNAK.
var errNak = errors.New("server sent DHCPNAK")

// Run gets a lease and keeps it until ctx is cancelled: INIT-REBOOT with
// the persisted lease if there is one (falling back to DISCOVER on DHCPNAK
// or silence), then renewals at T1 and rebinding at T2; a lost lease is
// reported to OnExpire and the client starts over. Failures are logged and
// retried with backoff. When ctx is cancelled Run releases the lease
// (unless KeepLease) and returns nil. Run must not be called twice at once.
func (c *Client4) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return c.errorf("Run called while already running")
	}
	defer c.running.Store(false)
	defer c.st.set(StateStopped, nil)

	bo := backoff{min: c.t.minBackoff, max: c.t.maxBackoff}
	persisted, havePersisted := c.store.load(time.Now())
	for ctx.Err() == nil {
		var (
			l   Lease
			err error
		)
		if havePersisted {
			havePersisted = false
			c.st.set(StateRebooting, nil)
			c.log.Info("asking for the persisted lease (INIT-REBOOT)", "address", persisted.Address)
			l, err = c.reboot(ctx, persisted)
			if err != nil && ctx.Err() == nil {
				c.log.Info("INIT-REBOOT failed; discovering", "err", err)
				if errors.Is(err, errNak) {
					c.removePersisted()
				}
			}
		}
		if !l.Address.IsValid() && ctx.Err() == nil {
			c.st.set(StateInit, nil)
			l, err = c.discover(ctx)
		}
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
		c.publish(l)
		kept, err := c.keep(ctx, l)
		if err == nil { // lease lost, start over
			continue
		}
		c.stop(kept)
		break
	}
	return nil
}

// publish records and announces a bound lease.
func (c *Client4) publish(l Lease) {
	c.st.setError(nil)
	c.st.set(StateBound, &l)
	c.log.Info("lease bound", "address", l.Address, "server", l.Server, "router", l.Router,
		"leaseTime", l.LeaseTime, "renewAt", l.RenewAt.Format(time.RFC3339))
	if err := c.store.save(l); err != nil {
		c.log.Warn("cannot persist lease", "err", err)
	}
	if c.cfg.OnLease != nil {
		c.cfg.OnLease(l)
	}
}

// expire announces that l is no longer valid and forgets it.
func (c *Client4) expire(l Lease, why string) {
	c.log.Warn("lease lost", "address", l.Address, "reason", why)
	c.st.set(StateInit, nil)
	c.removePersisted()
	if c.cfg.OnExpire != nil {
		c.cfg.OnExpire(l)
	}
}

func (c *Client4) removePersisted() {
	if err := c.store.remove(); err != nil {
		c.log.Warn("cannot forget persisted lease", "err", err)
	}
}

// keep holds lease l: it renews at T1 and rebinds at T2 (RFC 2131 §4.4.5).
// It returns a nil error once the lease is lost (OnExpire has been called),
// and ctx's error with the lease still held when ctx is cancelled.
func (c *Client4) keep(ctx context.Context, l Lease) (Lease, error) {
	for {
		c.st.set(StateBound, &l)
		if err := sleep(ctx, time.Until(l.RenewAt)); err != nil {
			return l, err
		}
		for {
			now := time.Now()
			if !now.Before(l.ExpiresAt) {
				c.expire(l, "expired")
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
			ack, err := c.extend(xctx, l, rebind)
			cancel()
			if ctx.Err() != nil {
				return l, ctx.Err()
			}
			if err == nil {
				nl, lerr := leaseFromACK(c.cfg.Interface, ack, time.Now(), &l, c.log)
				if lerr != nil {
					err = c.errorf("renewal: %w", lerr)
				} else {
					if nl.Address != l.Address {
						c.expire(l, fmt.Sprintf("renewal gave %s", nl.Address))
					}
					l = nl
					c.publish(l)
					break
				}
			}
			if errors.Is(err, errNak) {
				c.expire(l, "server refused to extend the lease (DHCPNAK)")
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

// stop ends Run with lease l still valid (if l.Address is valid): it
// sends DHCPRELEASE and forgets the lease, or with KeepLease leaves both.
func (c *Client4) stop(l Lease) {
	if !l.Address.IsValid() {
		return
	}
	if c.cfg.KeepLease {
		c.log.Info("stopping; keeping the lease for the next start", "address", l.Address)
		return
	}
	if err := c.release(l); err != nil {
		c.log.Warn("cannot send DHCPRELEASE", "address", l.Address, "err", err)
	} else {
		c.log.Info("lease released", "address", l.Address, "server", l.Server)
	}
	c.removePersisted()
	if c.cfg.OnExpire != nil {
		c.cfg.OnExpire(l)
	}
}

// modifiers are the options every DISCOVER and REQUEST carries.
func (c *Client4) modifiers() []dhcpv4.Modifier {
	m := []dhcpv4.Modifier{
		dhcpv4.WithRequestedOptions(requestedOptions4()...),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize)),
	}
	if c.cfg.Hostname != "" {
		m = append(m, dhcpv4.WithOption(dhcpv4.OptHostName(c.cfg.Hostname)))
	}
	if len(c.cfg.ClientID) > 0 {
		m = append(m, dhcpv4.WithOption(dhcpv4.OptClientIdentifier(c.cfg.ClientID)))
	}
	return m
}

// rawClient opens an nclient4 client on a raw packet socket, which works
// before the interface has an address. The caller closes it.
func (c *Client4) rawClient(retries int) (*nclient4.Client, error) {
	cl, err := nclient4.New(c.cfg.Interface,
		nclient4.WithTimeout(c.t.timeout),
		nclient4.WithRetry(retries),
		nclient4.WithLogger(nclientLogger{c.log}))
	if err != nil {
		return nil, fmt.Errorf("open raw socket: %w", err)
	}
	return cl, nil
}

// udpClient opens an nclient4 client on a kernel UDP socket bound to the
// interface; replies addressed to the configured address reach it.
func (c *Client4) udpClient(ctx context.Context, ifc *net.Interface) (*nclient4.Client, error) {
	conn, err := listenUDP4(ctx, ifc.Name)
	if err != nil {
		return nil, err
	}
	cl, err := nclient4.NewWithConn(conn, ifc.HardwareAddr,
		nclient4.WithTimeout(c.t.timeout),
		nclient4.WithRetry(c.t.retries),
		nclient4.WithLogger(nclientLogger{c.log}))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return cl, nil
}

// discover runs DISCOVER, OFFER, REQUEST, ACK (RFC 2131 §3.1).
func (c *Client4) discover(ctx context.Context) (Lease, error) {
	if _, err := interfaceByName(c.cfg.Interface); err != nil {
		return Lease{}, c.errorf("%w", err)
	}
	waitCarrier(ctx, c.cfg.Interface, carrierWait)
	cl, err := c.rawClient(c.t.retries)
	if err != nil {
		return Lease{}, c.errorf("%w", err)
	}
	defer cl.Close()
	offer, err := cl.DiscoverOffer(ctx, c.modifiers()...)
	if err != nil {
		return Lease{}, c.errorf("discover: %w", err)
	}
	c.log.Debug("offer", "address", offer.YourIPAddr, "server", offer.ServerIdentifier())
	nl, err := cl.RequestFromOffer(ctx, offer, c.modifiers()...)
	if _, ok := errors.AsType[*nclient4.ErrNak](err); ok {
		return Lease{}, c.errorf("request %s: %w", offer.YourIPAddr, errNak)
	}
	if err != nil {
		return Lease{}, c.errorf("request %s: %w", offer.YourIPAddr, err)
	}
	l, err := leaseFromACK(c.cfg.Interface, nl.ACK, nl.CreationTime, nil, c.log)
	if err != nil {
		return Lease{}, c.errorf("%w", err)
	}
	return l, nil
}

// rebootRequest builds the REQUEST of INIT-REBOOT (RFC 2131 §4.3.2, Table
// 5): the address in option 50, ciaddr zero, no server identifier, so any
// server that knows the lease answers, by broadcast or to the MAC.
func (c *Client4) rebootRequest(hw net.HardwareAddr, addr netip.Addr) (*dhcpv4.DHCPv4, error) {
	return dhcpv4.New(append([]dhcpv4.Modifier{
		dhcpv4.WithHwAddr(hw),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(addr.AsSlice())),
	}, c.modifiers()...)...)
}

// reboot asks for the persisted lease p back with INIT-REBOOT. Silence
// fails after two tries: the client then discovers rather than waiting.
func (c *Client4) reboot(ctx context.Context, p Lease) (Lease, error) {
	ifc, err := interfaceByName(c.cfg.Interface)
	if err != nil {
		return Lease{}, c.errorf("%w", err)
	}
	waitCarrier(ctx, c.cfg.Interface, carrierWait)
	cl, err := c.rawClient(min(c.t.retries, 2))
	if err != nil {
		return Lease{}, c.errorf("%w", err)
	}
	defer cl.Close()
	req, err := c.rebootRequest(ifc.HardwareAddr, p.Address.Addr())
	if err != nil {
		return Lease{}, c.errorf("build request: %w", err)
	}
	ack, err := cl.SendAndRead(ctx, nclient4.DefaultServers, req,
		nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak))
	if err != nil {
		return Lease{}, c.errorf("INIT-REBOOT %s: %w", p.Address.Addr(), err)
	}
	if ack.MessageType() == dhcpv4.MessageTypeNak {
		return Lease{}, c.errorf("INIT-REBOOT %s: %w (%s)", p.Address.Addr(), errNak, ack.Message())
	}
	l, err := leaseFromACK(c.cfg.Interface, ack, time.Now(), &p, c.log)
	if err != nil {
		return Lease{}, c.errorf("%w", err)
	}
	return l, nil
}

// extend renews (unicast to the server, rebind false) or rebinds
// (broadcast, rebind true) lease l and returns the server's DHCPACK.
func (c *Client4) extend(ctx context.Context, l Lease, rebind bool) (*dhcpv4.DHCPv4, error) {
	op := "renew"
	if rebind {
		op = "rebind"
	}
	ifc, err := interfaceByName(c.cfg.Interface)
	if err != nil {
		return nil, c.errorf("%s: %w", op, err)
	}
	configured, err := hasAddr(ifc, l.Address.Addr())
	if err != nil {
		return nil, c.errorf("%s: %w", op, err)
	}
	var (
		cl   *nclient4.Client
		req  *dhcpv4.DHCPv4
		dest = nclient4.DefaultServers
	)
	if configured {
		// RENEWING/REBINDING (RFC 2131 §4.3.2, Table 5): ciaddr is the
		// address, no option 50 nor 54; unicast while renewing.
		cl, err = c.udpClient(ctx, ifc)
		if err == nil {
			req, err = dhcpv4.New(append([]dhcpv4.Modifier{
				dhcpv4.WithHwAddr(ifc.HardwareAddr),
				dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
				dhcpv4.WithClientIP(l.Address.Addr().AsSlice()),
			}, c.modifiers()...)...)
		}
		if !rebind {
			dest = &net.UDPAddr{IP: l.Server.AsSlice(), Port: serverPort4}
		}
	} else {
		// The server would answer a request carrying ciaddr by unicast to
		// ciaddr, which this host does not own yet: ask as in INIT-REBOOT.
		c.log.Info("leased address is not on the interface yet; extending by broadcast", "op", op, "address", l.Address)
		cl, err = c.rawClient(c.t.retries)
		if err == nil {
			req, err = c.rebootRequest(ifc.HardwareAddr, l.Address.Addr())
		}
	}
	if cl != nil {
		defer cl.Close()
	}
	if err != nil {
		return nil, c.errorf("%s: %w", op, err)
	}
	c.log.Debug("extending lease", "op", op, "address", l.Address, "to", dest, "unicastSocket", configured)
	ack, err := cl.SendAndRead(ctx, dest, req, nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak))
	if err != nil {
		return nil, c.errorf("%s %s: %w", op, l.Address.Addr(), err)
	}
	if ack.MessageType() == dhcpv4.MessageTypeNak {
		return nil, c.errorf("%s %s: %w (%s)", op, l.Address.Addr(), errNak, ack.Message())
	}
	return ack, nil
}

// release sends DHCPRELEASE for l to its server (RFC 2131 §4.4.6). There is
// no answer to wait for.
func (c *Client4) release(l Lease) error {
	ifc, err := interfaceByName(c.cfg.Interface)
	if err != nil {
		return c.errorf("release: %w", err)
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(ifc.HardwareAddr),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease),
		dhcpv4.WithClientIP(l.Address.Addr().AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(l.Server.AsSlice())),
	}
	if len(c.cfg.ClientID) > 0 {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClientIdentifier(c.cfg.ClientID)))
	}
	msg, err := dhcpv4.New(mods...)
	if err != nil {
		return c.errorf("release: build message: %w", err)
	}
	configured, err := hasAddr(ifc, l.Address.Addr())
	if err != nil {
		return c.errorf("release: %w", err)
	}
	// The context only bounds opening the socket; ctx of Run is done by now.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var (
		conn net.PacketConn
		dest = &net.UDPAddr{IP: l.Server.AsSlice(), Port: serverPort4}
	)
	if configured {
		conn, err = listenUDP4(ctx, ifc.Name)
	} else {
		// Without the address the packet's source is 0.0.0.0, and a
		// server's kernel drops a unicast packet from 0.0.0.0 as a martian;
		// a broadcast one is accepted. Option 54 and ciaddr still say
		// which server and which lease.
		conn, err = nclient4.NewRawUDPConn(ifc.Name, clientPort4)
		dest = nclient4.DefaultServers
	}
	if err != nil {
		return c.errorf("release: %w", err)
	}
	defer conn.Close()
	if _, err := conn.WriteTo(msg.ToBytes(), dest); err != nil {
		return c.errorf("release: send to %s: %w", dest, err)
	}
	return nil
}

// nclientLogger sends nclient4's messages to slog at debug level.
type nclientLogger struct{ log *slog.Logger }

func (n nclientLogger) Printf(format string, v ...any) {
	if n.log.Enabled(context.Background(), slog.LevelDebug) {
		n.log.Debug(fmt.Sprintf(format, v...))
	}
}

func (n nclientLogger) PrintMessage(prefix string, m *dhcpv4.DHCPv4) {
	if n.log.Enabled(context.Background(), slog.LevelDebug) {
		n.log.Debug(prefix, "type", m.MessageType().String(), "xid", m.TransactionID.String(),
			"ciaddr", m.ClientIPAddr, "yiaddr", m.YourIPAddr)
	}
}
