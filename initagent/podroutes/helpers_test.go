package podroutes

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
)

// The kernel tests run the whole test binary in a throwaway network
// namespace (nstest.Main); each test makes namespaces of its own for its
// nodes and pods below that, and the API server listens on the binary's
// loopback.
func TestMain(m *testing.M) { os.Exit(nstest.Main(m)) }

// newNetns creates a network namespace, closed when the test ends.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	nstest.Handle(t) // skips unless the binary runs in its own namespace
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result)
	go func() {
		goruntime.LockOSThread()
		self, err := netns.Get()
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer self.Close()
		ns, err := netns.New()
		if err == nil && netns.Set(self) == nil {
			goruntime.UnlockOSThread()
		} // else the thread stays locked and is discarded with the goroutine
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create netns: %v", r.err)
	}
	t.Cleanup(func() { r.ns.Close() })
	h := handleAt(t, r.ns)
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	return r.ns
}

func handleAt(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink in netns: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// inNetns runs fn on a thread in ns: sockets fn creates live there.
func inNetns(t *testing.T, ns netns.NsHandle, fn func() error) {
	t.Helper()
	errc := make(chan error)
	go func() {
		goruntime.LockOSThread()
		self, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		err = fn()
		if netns.Set(self) == nil {
			goruntime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// sysctl writes a sysctl of ns (net.* sysctls are per namespace).
func sysctl(t *testing.T, ns netns.NsHandle, name, value string) {
	t.Helper()
	inNetns(t, ns, func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(value), 0o644)
	})
}

// veth creates a veth pair: name in ns, peer in peerNS.
func veth(t *testing.T, ns netns.NsHandle, name string, peerNS netns.NsHandle, peer string) {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: peer, PeerNamespace: netlink.NsFd(int(peerNS))}
	if err := handleAt(t, ns).LinkAdd(v); err != nil {
		t.Fatalf("veth %s/%s: %v", name, peer, err)
	}
}

// configure adds addresses (without duplicate address detection, so they
// are usable at once) to a link of h and sets it up.
func configure(t *testing.T, h *netlink.Handle, name string, addrs ...string) netlink.Link {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		addr.Flags = unix.IFA_F_NODAD
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatalf("add %s to %s: %v", a, name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatalf("set %s up: %v", name, err)
	}
	return link
}

// routes returns the main table's routes by destination (the first one of
// each).
func routes(t *testing.T, h *netlink.Handle) map[netip.Prefix]netlink.Route {
	t.Helper()
	rs, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		t.Fatalf("list routes: %v", err)
	}
	out := map[netip.Prefix]netlink.Route{}
	for _, r := range rs {
		if p, ok := prefixOf(r); ok {
			if _, seen := out[p]; !seen {
				out[p] = r
			}
		}
	}
	return out
}

func describeRoutes(rs map[netip.Prefix]netlink.Route) string {
	var lines []string
	for p, r := range rs {
		lines = append(lines, fmt.Sprintf("%s via %s dev %d proto %s", p, r.Gw, r.LinkIndex, r.Protocol))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// waitFor polls cond until it holds; the bound only keeps a broken test
// from hanging, it is not what the test measures.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: never happened; last state:\n%s", what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hasRoute reports whether the kernel routes p via gw with protocol proto.
func hasRoute(t *testing.T, h *netlink.Handle, p, gw string, proto int) func() (bool, string) {
	return func() (bool, string) {
		rs := routes(t, h)
		r, ok := rs[netip.MustParsePrefix(p)]
		return ok && r.Gw.Equal(net.ParseIP(gw)) && int(r.Protocol) == proto, describeRoutes(rs)
	}
}

func noRoute(t *testing.T, h *netlink.Handle, p string) func() (bool, string) {
	return func() (bool, string) {
		rs := routes(t, h)
		_, ok := rs[netip.MustParsePrefix(p)]
		return !ok, describeRoutes(rs)
	}
}

// startDaemon runs d until the test ends and checks that Run returns nil.
func startDaemon(t *testing.T, d *Daemon) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// logRecorder keeps the daemon's log records for the tests to read.
type logRecorder struct {
	mu   sync.Mutex
	recs []logRecord
}

type logRecord struct {
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{Level: r.Level, Msg: r.Message, Attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.Attrs[a.Key] = a.Value.String()
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, rec)
	l.mu.Unlock()
	return nil
}

// count returns how many records match, and all records for a failure message.
func (l *logRecorder) count(match func(logRecord) bool) (int, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	var all []string
	for _, r := range l.recs {
		if match(r) {
			n++
		}
		all = append(all, fmt.Sprintf("%s %s %v", r.Level, r.Msg, r.Attrs))
	}
	return n, strings.Join(all, "\n")
}

func (l *logRecorder) logged(level slog.Level, msg string, attrs ...string) func() (bool, string) {
	return func() (bool, string) {
		n, all := l.count(matchLog(level, msg, attrs...))
		return n > 0, all
	}
}

func matchLog(level slog.Level, msg string, attrs ...string) func(logRecord) bool {
	return func(r logRecord) bool {
		if r.Level != level || r.Msg != msg {
			return false
		}
		for i := 0; i+1 < len(attrs); i += 2 {
			if r.Attrs[attrs[i]] != attrs[i+1] {
				return false
			}
		}
		return true
	}
}
