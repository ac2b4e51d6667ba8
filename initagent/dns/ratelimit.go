package dns

import (
	"net/netip"
	"sync"
	"time"
)

// maxBuckets bounds the limiter's memory when clients spoof many sources.
const maxBuckets = 1 << 16

type bucket struct {
	tokens float64
	last   time.Time
}

// limiter is a token bucket per client address.
type limiter struct {
	mu      sync.Mutex
	qps     float64
	burst   float64
	buckets map[netip.Addr]*bucket
	now     func() time.Time
}

func newLimiter(qps float64, burst int, now func() time.Time) *limiter {
	return &limiter{qps: qps, burst: float64(max(burst, 1)), buckets: map[netip.Addr]*bucket{}, now: now}
}

func (l *limiter) allow(a netip.Addr) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[a]
	if !ok {
		if len(l.buckets) >= maxBuckets {
			l.gcLocked(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[a] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.qps)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *limiter) gc() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gcLocked(l.now())
}

// gcLocked forgets buckets that have refilled: they hold no information.
func (l *limiter) gcLocked(now time.Time) {
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.qps >= l.burst {
			delete(l.buckets, a)
		}
	}
}
