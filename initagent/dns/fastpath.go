package dns

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// The UDP fast path answers the common queries (one lower-case question,
// optionally an OPT record) straight from packed replies, without unpacking
// the query or packing the reply: a local name's reply is packed once per
// name and type (recordSet.wireAnswer), a cached reply once when it is
// stored (cache.set). Only the ID, the RD and CD bits, the TTLs and the OPT
// record are written per query. Everything else (upper case, escapes,
// compression in the query, unknown EDNS options, truncation, stale
// answers, cache misses, refusals) takes the slow path, the handler chain,
// whose reply is byte for byte what the fast path sends for the queries it
// takes (TestFastPathMatchesChain, FuzzFastPath).

// wireTmpl is a packed reply with ID 0, RD and CD clear, and no OPT.
type wireTmpl struct {
	b    []byte
	ttls []uint16 // offset of every record's TTL, to age cached replies
}

// newWireTmpl packs m compressed, as trackWriter does; nil if it does not
// pack.
func newWireTmpl(m *dns.Msg, ttls bool) *wireTmpl {
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	t := &wireTmpl{b: b}
	if ttls {
		var ok bool
		if t.ttls, ok = ttlOffsets(b); !ok {
			return nil
		}
	}
	return t
}

// ttlOffsets walks a packed message (RFC 1035 §4.1) and returns where each
// record's TTL is.
func ttlOffsets(b []byte) ([]uint16, bool) {
	if len(b) < 12 || len(b) > dns.MaxMsgSize {
		return nil, false
	}
	qd := int(binary.BigEndian.Uint16(b[4:]))
	n := int(binary.BigEndian.Uint16(b[6:])) + int(binary.BigEndian.Uint16(b[8:])) + int(binary.BigEndian.Uint16(b[10:]))
	off := 12
	for range qd {
		if off = skipName(b, off); off < 0 || off+4 > len(b) {
			return nil, false
		}
		off += 4
	}
	offs := make([]uint16, 0, n)
	for range n {
		// name, type(2), class(2), ttl(4), rdlength(2), rdata
		if off = skipName(b, off); off < 0 || off+10 > len(b) {
			return nil, false
		}
		offs = append(offs, uint16(off+4))
		off += 10 + int(binary.BigEndian.Uint16(b[off+8:]))
		if off > len(b) {
			return nil, false
		}
	}
	return offs, off == len(b)
}

// skipName returns the offset after the (possibly compressed) name at off,
// or -1.
func skipName(b []byte, off int) int {
	for off < len(b) {
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1
		case l&0xC0 == 0xC0: // pointer, RFC 1035 §4.1.4: ends the name
			if off+2 > len(b) {
				return -1
			}
			return off + 2
		case l&0xC0 != 0:
			return -1
		}
		off += 1 + l
	}
	return -1
}

// fastQuery is what the fast path needs of a query.
type fastQuery struct {
	name          []byte // lower case, presentation format ("a.example.")
	qtype, qclass uint16
	qend          int // offset after the question
	edns, do      bool
	udpSize       int
}

// parseFastQuery accepts only queries the slow path would unpack to the
// same question and answer in the same way: opcode QUERY, one question with
// a plain lower-case name (a-z, 0-9, '-', '_', no compression), nothing
// else but an EDNS version 0 OPT record with no options other than cookie
// and padding, and no trailing bytes. name is the buffer for q.name.
func parseFastQuery(b []byte, q *fastQuery, name []byte) bool {
	if len(b) < 12+5 || b[2]&0xF8 != 0 || // QR and opcode (RFC 1035 §4.1.1)
		binary.BigEndian.Uint16(b[4:]) != 1 || binary.BigEndian.Uint16(b[6:]) != 0 || binary.BigEndian.Uint16(b[8:]) != 0 {
		return false
	}
	ar := binary.BigEndian.Uint16(b[10:])
	if ar > 1 {
		return false
	}
	off := 12
	name = name[:0]
	for {
		if off >= len(b) {
			return false
		}
		l := int(b[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 || off+l > len(b) {
			return false
		}
		for _, c := range b[off : off+l] {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
		name = append(name, b[off:off+l]...)
		name = append(name, '.')
		off += l
	}
	if off-12 > 255 { // RFC 1035 §3.1
		return false
	}
	if len(name) == 0 {
		name = append(name, '.')
	}
	if off+4 > len(b) {
		return false
	}
	q.name = name
	q.qtype = binary.BigEndian.Uint16(b[off:])
	q.qclass = binary.BigEndian.Uint16(b[off+2:])
	off += 4
	q.qend = off
	q.edns, q.do, q.udpSize = false, false, 0
	if ar == 1 {
		// OPT, RFC 6891 §6.1.2: root name, type 41, class = UDP size,
		// TTL = extended rcode, version, DO and Z flags.
		if off+11 > len(b) || b[off] != 0 || binary.BigEndian.Uint16(b[off+1:]) != dns.TypeOPT || b[off+6] != 0 {
			return false
		}
		q.edns = true
		q.udpSize = int(binary.BigEndian.Uint16(b[off+3:]))
		q.do = b[off+7]&0x80 != 0
		rdlen := int(binary.BigEndian.Uint16(b[off+9:]))
		off += 11
		if off+rdlen != len(b) {
			return false
		}
		for end := off + rdlen; off < end; {
			if off+4 > end {
				return false
			}
			code, l := binary.BigEndian.Uint16(b[off:]), int(binary.BigEndian.Uint16(b[off+2:]))
			if code != dns.EDNS0COOKIE && code != dns.EDNS0PADDING {
				return false
			}
			off += 4 + l
		}
	}
	return off == len(b)
}

// fastBuf is one UDP reader's scratch space.
type fastBuf struct {
	name [256]byte
	key  [256 + 5]byte
	out  []byte
}

// optRR is the OPT record the slow path adds with SetEdns0(ednsSize, do),
// DO clear; optRR[7] carries DO.
var optRR = [11]byte{0, byte(dns.TypeOPT >> 8), byte(dns.TypeOPT), ednsSize >> 8, ednsSize & 0xFF, 0, 0, 0, 0, 0, 0}

// fastUDP answers b from client when it can, into fb.out; it changes no
// state (counters, rate limit) unless it answers.
func (s *Server) fastUDP(b []byte, client netip.Addr, fb *fastBuf) ([]byte, bool) {
	var q fastQuery
	if !parseFastQuery(b, &q, fb.name[:0]) || q.qtype == dns.TypeAXFR || q.qtype == dns.TypeIXFR {
		return nil, false
	}
	var (
		t     *wireTmpl
		age   uint32
		local bool
	)
	if rs := s.records(); rs.owns(q.name, q.qclass) {
		if t = rs.wireAnswer(q.name, q.qtype, fb.key[:0]); t == nil {
			return nil, false
		}
		local = true
	} else {
		if s.cache == nil || !s.allowedClient(client) {
			return nil, false
		}
		now := s.cache.now()
		e := s.cache.lookup(appendCacheKey(fb.key[:0], q.name, q.qtype, q.qclass, q.do, b[3]&0x10 != 0))
		if e == nil || e.wire.b == nil || !now.Before(e.expires) {
			return nil, false
		}
		t, age = &e.wire, uint32(now.Sub(e.stored)/time.Second)
	}
	size := dns.MinMsgSize
	if q.edns && q.udpSize > size {
		size = q.udpSize
	}
	n := len(t.b)
	if q.edns {
		n += len(optRR)
	}
	if n > size {
		return nil, false // the slow path truncates
	}

	s.stats.queries.Add(1)
	if s.limited(client) {
		s.stats.rateLimited.Add(1)
		// As ServeDNS's SetRcode reply: the question, RD and CD, RA.
		out := append(fb.out[:0], b[:q.qend]...)
		out[2] = 0x80 | b[2]&0x01
		out[3] = 0x80 | b[3]&0x10 | dns.RcodeRefused
		clear(out[6:12])
		fb.out = out
		return out, true
	}
	out := append(fb.out[:0], t.b...)
	out[0], out[1] = b[0], b[1]
	out[2] |= b[2] & 0x01 // RD
	out[3] |= b[3] & 0x10 // CD
	if age > 0 {
		for _, off := range t.ttls {
			ttl := binary.BigEndian.Uint32(out[off:])
			if ttl > age {
				ttl -= age
			} else {
				ttl = 0
			}
			binary.BigEndian.PutUint32(out[off:], ttl)
		}
	}
	if q.edns {
		binary.BigEndian.PutUint16(out[10:], binary.BigEndian.Uint16(out[10:])+1)
		out = append(out, optRR[:]...)
		if q.do {
			out[len(out)-4] = 0x80
		}
	}
	if local {
		s.stats.local.Add(1)
	} else {
		s.stats.cacheHits.Add(1)
	}
	fb.out = out
	return out, true
}
