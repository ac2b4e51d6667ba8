package podroutes

import (
	"log/slog"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// kernelEvents pokes kick when the node's addresses or routes change: an
// address that comes or goes changes which nodes are on-link, and a link
// that goes down takes its routes (ours too) with it.
type kernelEvents struct {
	ns   *netns.NsHandle
	log  *slog.Logger
	kick chan struct{}

	stopc chan struct{}
	wg    sync.WaitGroup
}

func (k *kernelEvents) start() {
	k.kick = make(chan struct{}, 1)
	k.stopc = make(chan struct{})
	k.wg.Add(2)
	go follow(k, "address", func(ch chan netlink.AddrUpdate, done chan struct{}) error {
		return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{Namespace: k.ns, ErrorCallback: k.subscriptionError})
	}, func(netlink.AddrUpdate) bool { return true })
	go follow(k, "route", func(ch chan netlink.RouteUpdate, done chan struct{}) error {
		return netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: k.ns, ErrorCallback: k.subscriptionError})
	}, func(u netlink.RouteUpdate) bool {
		// Our own additions need no second look; everything else may: our
		// routes removed by someone else, connected routes back after a link
		// came up, another owner's route for a pod CIDR.
		return u.Protocol != Protocol || u.Type != unix.RTM_NEWROUTE
	})
}

func (k *kernelEvents) stop() {
	close(k.stopc)
	k.wg.Wait()
}

func (k *kernelEvents) subscriptionError(err error) {
	k.log.Debug("pod routes: netlink subscription", "err", err)
}

func (k *kernelEvents) poke() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// follow keeps one netlink subscription, renewing it when the kernel drops
// it (a full socket buffer ends it), until stop.
func follow[T any](k *kernelEvents, what string, subscribe func(chan T, chan struct{}) error, interesting func(T) bool) {
	defer k.wg.Done()
	warned := false
	for {
		done := make(chan struct{})
		ch := make(chan T, 256)
		if err := subscribe(ch, done); err != nil {
			if !warned {
				k.log.Warn("pod routes: cannot follow kernel changes; routes are checked at each resync only until it works", "events", what, "err", err)
			}
			warned, ch = true, nil
		}
		for ch != nil {
			select {
			case u, ok := <-ch:
				if !ok {
					ch = nil
				} else if interesting(u) {
					k.poke()
				}
			case <-k.stopc:
				close(done)
				for range ch {
				}
				return
			}
		}
		close(done)
		select {
		case <-k.stopc:
			return
		case <-time.After(time.Second):
		}
		k.poke() // changes may have been missed in between
	}
}
