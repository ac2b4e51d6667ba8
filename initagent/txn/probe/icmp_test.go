package probe

import (
	"net/netip"
	"testing"
	"time"
)

func TestICMP(t *testing.T) {
	newLab(t)
	for _, c := range []probeCase{
		{name: "IPv4 answers", probe: ICMP(netip.MustParseAddr("10.9.0.1"))},
		{name: "IPv6 answers", probe: ICMP(netip.MustParseAddr("fd00:9::1"))},
		{name: "link-local answers", probe: ICMP(netip.MustParseAddr("fe80::1%pr0"))},
		{name: "IPv4 nobody", probe: ICMP(netip.MustParseAddr("10.9.0.99")), timeout: 700 * time.Millisecond,
			want: ErrTimeout, wantMsg: []string{"icmp 10.9.0.99", "no echo reply to 3 requests"}},
		{name: "IPv6 nobody", probe: ICMP(netip.MustParseAddr("fd00:9::99")), timeout: 700 * time.Millisecond,
			want: ErrTimeout, wantMsg: []string{"icmp fd00:9::99", "no echo reply"}},
		{name: "no route", probe: ICMP(netip.MustParseAddr("192.0.2.1")), timeout: 700 * time.Millisecond,
			want: ErrUnreachable, wantMsg: []string{"network is unreachable"}},
		{name: "unknown zone", probe: ICMP(netip.MustParseAddr("fe80::1%nosuch0")),
			want: ErrUnreachable, wantMsg: []string{"no interface nosuch0"}},
	} {
		t.Run(c.name, c.run)
	}
}
