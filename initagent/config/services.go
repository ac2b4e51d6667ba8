package config

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"strings"
)

func (v *validator) vip() {
	c := &v.cfg.Cluster.VIP
	if c.Interface != "" && !ifnameRE.MatchString(c.Interface) {
		v.fail("cluster.vip.interface", "%q is not a valid interface name", c.Interface)
	}
	if c.Priority < 0 || c.Priority > 254 {
		v.fail("cluster.vip.priority", "%d is outside 1–254 (255 belongs to an address owner, which a VIP node never is)", c.Priority)
	}
	if c.PreemptDelaySeconds < 0 {
		v.fail("cluster.vip.preemptDelaySeconds", "%d: must not be negative", c.PreemptDelaySeconds)
	}
	for name, id := range map[string]int{"cluster.vip.apiVRID": c.APIVRID, "cluster.vip.ingressVRID": c.IngressVRID} {
		if id < 0 || id > 255 {
			v.fail(name, "%d is outside 1–255 (0 derives it from the cluster name)", id)
		}
	}
	if c.APIVRID != 0 && c.APIVRID == c.IngressVRID {
		v.fail("cluster.vip.ingressVRID", "%d is also apiVRID: the two VIPs need their own virtual routers", c.IngressVRID)
	}
	if ms := c.AdvertIntervalMs; ms != 0 && (ms < 10 || ms > 40950 || ms%10 != 0) {
		v.fail("cluster.vip.advertIntervalMs", "%d: VRRPv3 carries centiseconds: use a multiple of 10 from 10 to 40950", ms)
	}
	hc := c.IngressCheck
	p := "cluster.vip.ingressCheck"
	switch {
	case hc.HTTP != "" && hc.TCP != "":
		v.fail(p, "both http and tcp set: choose one check")
	case hc.HTTP != "":
		if u, err := url.Parse(hc.HTTP); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.fail(p+".http", "%q is not an http(s) URL", hc.HTTP)
		}
	case hc.TCP != "":
		if _, port, err := net.SplitHostPort(hc.TCP); err != nil || port == "" {
			v.fail(p+".tcp", "%q: write host:port, e.g. 127.0.0.1:443", hc.TCP)
		}
	case hc.Weight != 0 || hc.Fault:
		v.fail(p, "weight or fault without http or tcp: say what to check")
	}
	if (hc.HTTP != "" || hc.TCP != "") && !hc.Fault && (hc.Weight < 1 || hc.Weight > 253) {
		v.fail(p+".weight", "%d: a failing check must cost 1–253 priority points, or set fault: true to give the VIP up", hc.Weight)
	}
	if (hc.HTTP != "" || hc.TCP != "") && len(v.cfg.Cluster.IngressVIPs) == 0 {
		v.fail(p, "set without cluster.ingressVIPs: there is no ingress VIP to track")
	}
}

func (v *validator) apiProxy() {
	c := &v.cfg.Cluster.APIProxy
	if c.Port < 0 || c.Port > 65535 {
		v.fail("cluster.apiProxy.port", "%d is not a TCP port", c.Port)
	}
	switch c.Balance {
	case "", "round-robin", "least-conn":
	default:
		v.fail("cluster.apiProxy.balance", "%q: use round-robin or least-conn", c.Balance)
	}
	if c.CheckIntervalMs < 0 || (c.CheckIntervalMs > 0 && c.CheckIntervalMs < 100) {
		v.fail("cluster.apiProxy.checkIntervalMs", "%d: use at least 100 (0 means 1000)", c.CheckIntervalMs)
	}
	for i, pin := range c.PinnedSPKI {
		if b, err := hex.DecodeString(strings.TrimSpace(pin)); err != nil || len(b) != 32 {
			v.fail(fmt.Sprintf("cluster.apiProxy.pinnedSPKI[%d]", i), "%q is not a hex sha256 (64 hex digits) of a public key", pin)
		}
	}
}
