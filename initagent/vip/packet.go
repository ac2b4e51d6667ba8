package vip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// VRRP on the wire (RFC 5798).
const (
	// ipProtoVRRP is the IP protocol number (RFC 5798 §5.1.1.4, §5.1.2.3).
	ipProtoVRRP = 112
	// vrrpVersion is the version this speaker implements (§5.2.1).
	vrrpVersion = 3
	// typeAdvertisement is the only packet type (§5.2.2).
	typeAdvertisement = 1
	// headerLen is the fixed part before the address list (§5.1).
	headerLen = 8
	// maxAdvertCentis is the largest Max Adver Int, a 12-bit field (§5.2.7).
	maxAdvertCentis = 0xfff
	// requiredTTL is the TTL or hop limit every advert must carry (§5.1.1.3, §5.1.2.2).
	requiredTTL = 255
)

// Multicast groups adverts go to (§5.1.1.2, §5.1.2.2).
var (
	groupV4 = netip.MustParseAddr("224.0.0.18")
	groupV6 = netip.MustParseAddr("ff02::12")
)

// advert is a decoded VRRPv3 advertisement.
type advert struct {
	VRID     uint8
	Priority uint8
	// Centis is the Max Adver Int in centiseconds.
	Centis uint16
	Addrs  []netip.Addr
}

// Errors from decodeAdvert, one per counter in Counters.
var (
	errMalformed = errors.New("malformed VRRP packet")
	errVersion   = errors.New("not a VRRPv3 advertisement")
	errChecksum  = errors.New("bad VRRP checksum")
)

// marshal encodes a as sent from src to dst; src and dst only enter the
// checksum's pseudo-header (§5.2.8: in version 3 for IPv4 too).
func (a *advert) marshal(src, dst netip.Addr) []byte {
	alen := 4
	if src.Is6() {
		alen = 16
	}
	b := make([]byte, headerLen, headerLen+alen*len(a.Addrs))
	b[0] = vrrpVersion<<4 | typeAdvertisement
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = uint8(len(a.Addrs))
	binary.BigEndian.PutUint16(b[4:], a.Centis&maxAdvertCentis)
	for _, ip := range a.Addrs {
		b = append(b, ip.AsSlice()...)
	}
	binary.BigEndian.PutUint16(b[6:], checksum(b, src, dst))
	return b
}

// decodeAdvert parses and checks b, received from src on dst (the
// destination address of the IP packet, for the checksum).
func decodeAdvert(b []byte, src, dst netip.Addr) (*advert, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("%w: %d bytes", errMalformed, len(b))
	}
	if b[0]>>4 != vrrpVersion || b[0]&0xf != typeAdvertisement {
		return nil, fmt.Errorf("%w: version %d type %d", errVersion, b[0]>>4, b[0]&0xf)
	}
	alen := 4
	if src.Is6() {
		alen = 16
	}
	n := int(b[3])
	if len(b) < headerLen+n*alen {
		return nil, fmt.Errorf("%w: %d addresses do not fit in %d bytes", errMalformed, n, len(b))
	}
	// Trailing bytes (padding) are not part of the message (§7.1 checks the length).
	b = b[:headerLen+n*alen]
	if checksum(b, src, dst) != 0 {
		return nil, errChecksum
	}
	a := &advert{
		VRID:     b[1],
		Priority: b[2],
		Centis:   binary.BigEndian.Uint16(b[4:]) & maxAdvertCentis,
	}
	if a.Centis == 0 {
		return nil, fmt.Errorf("%w: Max Adver Int is 0", errMalformed)
	}
	for i := range n {
		ip, _ := netip.AddrFromSlice(b[headerLen+i*alen : headerLen+(i+1)*alen])
		a.Addrs = append(a.Addrs, ip)
	}
	return a, nil
}

// checksum is the Internet checksum (RFC 1071) of the pseudo-header and b
// (RFC 5798 §5.2.8: the IPv4 pseudo-header of RFC 768 or the IPv6 one of
// RFC 8200 §8.1). Over a message with its checksum in place it is 0.
func checksum(b []byte, src, dst netip.Addr) uint16 {
	var sum uint32
	add := func(p []byte) {
		for len(p) >= 2 {
			sum += uint32(p[0])<<8 | uint32(p[1])
			p = p[2:]
		}
		if len(p) == 1 {
			sum += uint32(p[0]) << 8
		}
	}
	add(src.AsSlice())
	add(dst.AsSlice())
	if src.Is4() {
		sum += ipProtoVRRP + uint32(len(b))
	} else {
		sum += uint32(len(b))>>16 + uint32(len(b))&0xffff + ipProtoVRRP
	}
	add(b)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
