package apiproxy

import "context"

type subscriber struct {
	fn      func(healthy bool)
	pending []bool
}

// OnHealth subscribes fn to the aggregate health (Healthy): fn is called
// with the current value first, then with every change, in order, from one
// goroutine Run owns; calls made before Run starts are queued. fn should
// return quickly. The returned function cancels the subscription.
func (p *Proxy) OnHealth(fn func(healthy bool)) (cancel func()) {
	s := &subscriber{fn: fn}
	p.mu.Lock() // orders the first value with the changes recomputeLocked publishes
	p.subMu.Lock()
	s.pending = append(s.pending, p.healthy.Load())
	p.subs = append(p.subs, s)
	p.subMu.Unlock()
	p.mu.Unlock()
	p.signal()
	return func() {
		p.subMu.Lock()
		defer p.subMu.Unlock()
		for i, x := range p.subs {
			if x == s {
				p.subs = append(p.subs[:i:i], p.subs[i+1:]...)
				return
			}
		}
	}
}

// publish queues a change for every subscriber; called with p.mu held, so
// the queues keep the order of the changes.
func (p *Proxy) publish(healthy bool) {
	p.subMu.Lock()
	for _, s := range p.subs {
		s.pending = append(s.pending, healthy)
	}
	p.subMu.Unlock()
	p.signal()
}

func (p *Proxy) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// dispatch delivers the queued health values until ctx is done.
func (p *Proxy) dispatch(ctx context.Context) {
	for {
		for {
			fn, v, ok := p.nextEvent()
			if !ok {
				break
			}
			fn(v)
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		}
	}
}

func (p *Proxy) nextEvent() (func(bool), bool, bool) {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	for _, s := range p.subs {
		if len(s.pending) > 0 {
			v := s.pending[0]
			s.pending = s.pending[1:]
			return s.fn, v, true
		}
	}
	return nil, false, false
}
