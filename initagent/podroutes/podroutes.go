// Package podroutes routes the other nodes' pod CIDRs via their node
// addresses, as flannel's host-gw backend does: on a flat L2 network pods on
// different nodes reach each other without an overlay, MTU unchanged.
//
// The daemon follows the cluster's Node objects (list, then watch; a fresh
// list every Resync and after a dropped watch) and keeps, for every other
// node with podCIDRs and an InternalIP of the same family inside a connected
// subnet of this node, the route "podCIDR via InternalIP dev <that subnet's
// interface>" in the main table. Its routes carry Protocol, so a restarted
// daemon finds and corrects the ones a previous run left, and no other
// route is ever changed. A node whose address is not on-link would need BGP
// or an overlay; it is logged once and skipped.
//
//	d := &podroutes.Daemon{NodeName: "node-a", Log: log,
//		Connect: func(ctx context.Context) (podroutes.Nodes, error) {
//			return runtime.LoadKubeconfig("/var/lib/kubelet/kubeconfig", "")
//		}}
//	err := d.Run(ctx)
//
// Routes stay when the daemon stops: pods keep reaching each other while the
// agent restarts, and the next run reconciles them.
package podroutes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/runtime"
)

// Nodes is the part of the Kubernetes API the daemon uses
// (*runtime.KubeClient has it).
type Nodes interface {
	ListNodes(ctx context.Context) (*runtime.NodeList, error)
	WatchNodes(ctx context.Context, resourceVersion string, fn func(runtime.NodeEvent) error) error
}

// Defaults for the zero values of Daemon's fields.
const (
	DefaultResync     = 2 * time.Minute
	DefaultMinBackoff = 500 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
)

// Daemon keeps the pod routes of one node. Set the fields, then call Run
// once; Status may be called at any time.
type Daemon struct {
	// NodeName is this node's Node object; its own pod CIDRs get no route.
	NodeName string
	// Connect returns a client for the API. It is called before every list,
	// so it may fail until credentials exist (kubelet's kubeconfig) and
	// picks up rotated ones.
	Connect func(ctx context.Context) (Nodes, error)
	// Log gets each route added, updated and removed; nil discards.
	Log *slog.Logger
	// Netns is the network namespace to route in; nil means the caller's.
	Netns *netns.NsHandle
	// Resync is how often the nodes are listed afresh (the watch restarts);
	// zero means DefaultResync.
	Resync time.Duration
	// MinBackoff and MaxBackoff bound the wait before listing again after a
	// failed list or a watch the server ended early; zero means
	// DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration

	mu     sync.Mutex
	status Status

	// Owned by Run's goroutine.
	h      *netlink.Handle
	api    Nodes
	nodes  map[string]runtime.Node
	logged map[string]bool // skips already logged, by node|podCIDR|reason
}

// Status is what the daemon reports for the node status.
type Status struct {
	Routes  []RouteStatus `json:"routes"`
	Skipped []SkipStatus  `json:"skipped,omitempty"`
	// Nodes is how many Node objects the last list and watch events left.
	Nodes int `json:"nodes"`
	// Listed is when the nodes were last listed; zero until the first list.
	Listed   time.Time `json:"listed,omitzero"`
	Watching bool      `json:"watching"`
	// LastError is the last failure to list or watch the nodes, cleared by
	// the next list.
	LastError string `json:"lastError,omitempty"`
	// RouteError is what the last pass over the kernel's routes failed at.
	RouteError string `json:"routeError,omitempty"`
}

// RouteStatus is one pod route in the kernel.
type RouteStatus struct {
	Node    string `json:"node"`
	PodCIDR string `json:"podCIDR"`
	Via     string `json:"via"`
	Dev     string `json:"dev"`
}

// SkipStatus is another node's pod CIDR that has no route, and why.
type SkipStatus struct {
	Node    string `json:"node"`
	PodCIDR string `json:"podCIDR"`
	Reason  string `json:"reason"`
}

// Status returns a copy of the current status.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.status
	s.Routes = slices.Clone(s.Routes)
	s.Skipped = slices.Clone(s.Skipped)
	return s
}

func (d *Daemon) update(f func(*Status)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(&d.status)
}

// watchResult is how a watch ended and how long it ran.
type watchResult struct {
	err error
	ran time.Duration
}

// Run keeps the routes until ctx ends. It returns an error only when it
// cannot start (no netlink in the namespace).
func (d *Daemon) Run(ctx context.Context) error {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	resync := orDefault(d.Resync, DefaultResync)
	minBackoff, maxBackoff := orDefault(d.MinBackoff, DefaultMinBackoff), orDefault(d.MaxBackoff, DefaultMaxBackoff)
	var err error
	if d.Netns != nil {
		d.h, err = netlink.NewHandleAt(*d.Netns, unix.NETLINK_ROUTE)
	} else {
		d.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return fmt.Errorf("pod routes: netlink: %w", err)
	}
	defer d.h.Close()
	d.logged = map[string]bool{}

	ev := &kernelEvents{ns: d.Netns, log: d.Log}
	ev.start()
	defer ev.stop()

	var (
		fails     int
		retry     = time.NewTimer(0)
		resyncT   = time.NewTimer(resync)
		events    <-chan runtime.NodeEvent
		watchEnd  <-chan watchResult
		stopWatch = func() {}
	)
	defer func() { stopWatch() }()
	defer retry.Stop()
	defer resyncT.Stop()
	backoff := func() time.Duration {
		fails++
		b := minBackoff << min(fails-1, 20)
		if b > maxBackoff || b <= 0 {
			b = maxBackoff
		}
		// ±20% so that the nodes of a cluster do not all come back at once.
		return time.Duration(float64(b) * (0.8 + 0.4*rand.Float64()))
	}
	for {
		select {
		case <-ctx.Done():
			return nil

		case <-retry.C:
			stopWatch()
			events, watchEnd = nil, nil
			rv, err := d.list(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				wait := backoff()
				d.update(func(s *Status) { s.LastError = err.Error(); s.Watching = false })
				level := slog.LevelWarn
				if errors.Is(err, os.ErrNotExist) {
					level = slog.LevelInfo // no kubeconfig before kubelet's bootstrap
				}
				d.Log.Log(ctx, level, "pod routes: cannot list nodes", "err", err, "retryIn", wait.Round(time.Millisecond))
				retry.Reset(wait)
				continue
			}
			d.reconcile(ctx)
			events, watchEnd, stopWatch = d.watch(ctx, rv)
			resyncT.Reset(resync)

		case e := <-events:
			fails = 0 // a watch that delivers is a healthy one
			switch e.Type {
			case "DELETED":
				delete(d.nodes, e.Node.Metadata.Name)
			default:
				d.nodes[e.Node.Metadata.Name] = e.Node
			}
			d.reconcile(ctx)

		case r := <-watchEnd:
			events, watchEnd = nil, nil
			stopWatch()
			if ctx.Err() != nil {
				return nil
			}
			d.update(func(s *Status) { s.Watching = false })
			var ae *runtime.APIError
			switch {
			case errors.As(r.err, &ae) && ae.Code == 410:
				// Too old a version (the server compacted): list again.
				wait := backoff()
				d.Log.Info("pod routes: node watch expired; listing again", "err", r.err, "retryIn", wait.Round(time.Millisecond))
				retry.Reset(wait)
			case r.ran >= resync/2:
				fails = 0
				retry.Reset(0)
			default:
				wait := backoff()
				d.Log.Warn("pod routes: node watch ended", "err", r.err, "after", r.ran.Round(time.Millisecond), "retryIn", wait.Round(time.Millisecond))
				retry.Reset(wait)
			}

		case <-resyncT.C:
			if events != nil {
				stopWatch()
				events, watchEnd = nil, nil
				retry.Reset(0)
			}
			resyncT.Reset(resync)

		case <-ev.kick:
			if d.nodes != nil { // never before the first list: keep what a previous run left
				d.reconcile(ctx)
			}
		}
	}
}

func orDefault(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

// list connects and replaces the known nodes with the API's; it returns
// the resourceVersion to watch from.
func (d *Daemon) list(ctx context.Context) (string, error) {
	api, err := d.Connect(ctx)
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	l, err := api.ListNodes(lctx)
	if err != nil {
		return "", err
	}
	d.nodes = make(map[string]runtime.Node, len(l.Items))
	for _, n := range l.Items {
		d.nodes[n.Metadata.Name] = n
	}
	d.api = api
	now := time.Now()
	d.update(func(s *Status) { s.Listed, s.LastError = now, "" })
	return l.Metadata.ResourceVersion, nil
}

// watch follows the nodes from rv in a goroutine; stop ends it and waits
// for it.
func (d *Daemon) watch(ctx context.Context, rv string) (<-chan runtime.NodeEvent, <-chan watchResult, func()) {
	wctx, cancel := context.WithCancel(ctx)
	events := make(chan runtime.NodeEvent)
	end := make(chan watchResult, 1)
	done := make(chan struct{})
	api := d.api
	go func() {
		defer close(done)
		start := time.Now()
		err := api.WatchNodes(wctx, rv, func(e runtime.NodeEvent) error {
			select {
			case events <- e:
				return nil
			case <-wctx.Done():
				return wctx.Err()
			}
		})
		end <- watchResult{err: err, ran: time.Since(start)}
	}()
	d.update(func(s *Status) { s.Watching = true })
	var once sync.Once
	return events, end, func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}
