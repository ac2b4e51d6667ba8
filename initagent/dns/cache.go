package dns

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	maxTTL    = 3600 // cap on positive TTLs (seconds), as CoreDNS's cache
	maxNegTTL = 1800 // cap on negative TTLs, RFC 2308 §5 suggests 1–3 hours at most
	staleTTL  = 30   // TTL of stale answers, RFC 8767 §4
	// maxStale is how long an expired entry may still be served when every
	// upstream fails; RFC 8767 §5 recommends 1 to 3 days.
	maxStale = 24 * time.Hour
)

// cacheKey is the lower-case question name followed by five bytes: qtype,
// qclass (big endian) and the DO and CD bits. A string rather than a struct
// so the UDP fast path can look it up from a stack buffer without
// allocating (see appendCacheKey).
type cacheKey string

type cacheEntry struct {
	msg     *dns.Msg // reply without OPT; TTLs as stored
	wire    wireTmpl // b nil if the reply does not pack
	stored  time.Time
	expires time.Time
}

// cache holds forwarded replies, positive and negative, bounded in size.
type cache struct {
	mu      sync.RWMutex
	max     int
	entries map[cacheKey]*cacheEntry
	now     func() time.Time
}

func newCache(max int, now func() time.Time) *cache {
	return &cache{max: max, entries: make(map[cacheKey]*cacheEntry), now: now}
}

func keyOf(r *dns.Msg) cacheKey {
	q := r.Question[0]
	do := false
	if opt := r.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	return cacheKey(appendCacheKey(nil, strings.ToLower(q.Name), q.Qtype, q.Qclass, do, r.CheckingDisabled))
}

func appendCacheKey[S string | []byte](b []byte, lname S, qtype, qclass uint16, do, cd bool) []byte {
	b = append(b, lname...)
	var f byte
	if do {
		f |= 1
	}
	if cd {
		f |= 2
	}
	return append(b, byte(qtype>>8), byte(qtype), byte(qclass>>8), byte(qclass), f)
}

// question returns the key's lower-case name, qtype and qclass.
func (k cacheKey) question() dns.Question {
	n := len(k) - 5
	return dns.Question{Name: string(k[:n]), Qtype: uint16(k[n])<<8 | uint16(k[n+1]), Qclass: uint16(k[n+2])<<8 | uint16(k[n+3])}
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// ttlOf returns how long m may be cached: the smallest TTL of its records
// for an answer, or the SOA's negative TTL for NXDOMAIN/NODATA (RFC 2308 §5);
// zero means "do not cache".
func ttlOf(m *dns.Msg) uint32 {
	if m.Truncated || (m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError) {
		return 0
	}
	if m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0 {
		ttl := uint32(maxTTL)
		for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range sec {
				if rr.Header().Rrtype == dns.TypeOPT {
					continue
				}
				ttl = min(ttl, rr.Header().Ttl)
			}
		}
		return ttl
	}
	// NXDOMAIN, or NODATA: cache only with an SOA in authority (RFC 2308 §5).
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl, maxNegTTL)
		}
	}
	return 0
}

func (c *cache) set(k cacheKey, m *dns.Msg) {
	ttl := ttlOf(m)
	if ttl == 0 {
		return
	}
	m = m.Copy()
	m.Extra = stripOPT(m.Extra)
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			rr.Header().Ttl = min(rr.Header().Ttl, ttl)
		}
	}
	now := c.now()
	e := &cacheEntry{msg: m, stored: now, expires: now.Add(time.Duration(ttl) * time.Second)}
	// The packed reply for the UDP fast path, with the key's question: a
	// client asking in lower case gets exactly these bytes, ID, RD, CD and
	// TTLs patched (see fastUDP).
	t := *m
	t.Id, t.RecursionDesired, t.CheckingDisabled = 0, false, false
	t.Question = []dns.Question{k.question()}
	if w := newWireTmpl(&t, true); w != nil {
		e.wire = *w
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[k]; !ok && len(c.entries) >= c.max {
		c.evictLocked(now)
	}
	c.entries[k] = e
}

// evictLocked removes entries too old even for serve-stale, and if none,
// one arbitrary entry (Go's map order is randomised, as CoreDNS's cache).
func (c *cache) evictLocked(now time.Time) {
	n := 0
	for k, e := range c.entries {
		if now.Sub(e.expires) > maxStale {
			delete(c.entries, k)
			n++
		}
		if n >= 16 {
			break
		}
	}
	if n > 0 {
		return
	}
	for k := range c.entries {
		delete(c.entries, k)
		return
	}
}

// lookup returns the entry for the key k, which may be expired.
func (c *cache) lookup(k []byte) *cacheEntry {
	c.mu.RLock()
	e := c.entries[cacheKey(k)]
	c.mu.RUnlock()
	return e
}

// get returns a reply for r with TTLs decremented by the entry's age; with
// stale set, it also returns expired entries, with TTL staleTTL.
func (c *cache) get(k cacheKey, r *dns.Msg, stale bool) *dns.Msg {
	now := c.now()
	c.mu.RLock()
	e, ok := c.entries[k]
	c.mu.RUnlock()
	if !ok {
		return nil
	}
	expired := !now.Before(e.expires)
	if expired && (!stale || now.Sub(e.expires) > maxStale) {
		return nil
	}
	age := uint32(now.Sub(e.stored) / time.Second)
	m := e.msg.Copy()
	m.Id = r.Id
	m.Question = r.Question // the client's spelling (0x20 case randomisation)
	m.RecursionDesired = r.RecursionDesired
	m.CheckingDisabled = r.CheckingDisabled
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			switch {
			case expired:
				h.Ttl = staleTTL
			case h.Ttl > age:
				h.Ttl -= age
			default:
				h.Ttl = 0
			}
		}
	}
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(ednsSize, opt.Do())
		if expired {
			// RFC 8914 §4.4: Extended DNS Error 3, Stale Answer.
			o := m.IsEdns0()
			o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeStaleAnswer})
		}
	}
	return m
}

func stripOPT(rrs []dns.RR) []dns.RR {
	out := rrs[:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}

// cacheHandler answers from the cache, stores what the next handler
// answers, and serves stale entries when the next handler fails.
type cacheHandler struct {
	s    *Server
	c    *cache
	next Handler
}

func (h *cacheHandler) Name() string { return "cache" }

func (h *cacheHandler) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	k := keyOf(r)
	if m := h.c.get(k, r, false); m != nil {
		h.s.stats.cacheHits.Add(1)
		return m.Rcode, w.WriteMsg(m)
	}
	h.s.stats.cacheMisses.Add(1)
	rec := &cacheWriter{ResponseWriter: w, c: h.c, k: k}
	rcode, err := h.next.ServeDNS(ctx, rec, r)
	if rec.written {
		return rcode, err
	}
	if m := h.c.get(k, r, true); m != nil {
		h.s.stats.stale.Add(1)
		h.s.log.Debug("dns: serving stale", "name", r.Question[0].Name, "err", err)
		return m.Rcode, w.WriteMsg(m)
	}
	return rcode, err
}

// cacheWriter stores the reply on its way to the client.
type cacheWriter struct {
	dns.ResponseWriter
	c       *cache
	k       cacheKey
	written bool
}

func (w *cacheWriter) WriteMsg(m *dns.Msg) error {
	w.written = true
	w.c.set(w.k, m)
	return w.ResponseWriter.WriteMsg(m)
}
