package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/ballast-os/ballast/netboot"
)

// Paths served over HTTP(S).
const (
	ScriptPath    = "/boot.ipxe"  // ?mac=52-54-00-…&uuid=…&platform=efi|pcbios; without mac: a chain script
	ConfigPrefix  = "/config/"    // /config/52-54-00-00-00-21?uuid=…
	ArtifactsPath = "/artifacts/" // /artifacts/vmlinuz, /artifacts/initramfs.img, …
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+ScriptPath, s.handleScript)
	mux.HandleFunc("GET "+ConfigPrefix+"{mac}", s.handleConfig)
	mux.HandleFunc("GET "+ArtifactsPath+"{name}", s.handleArtifact)
	return mux
}

func remoteIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// parseMAC accepts aa:bb:cc:dd:ee:ff and iPXE's ${mac:hexhyp} aa-bb-cc-dd-ee-ff.
func parseMAC(s string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return nil, fmt.Errorf("mac %q is not an Ethernet MAC address: use 52-54-00-12-34-56 (iPXE ${mac:hexhyp})", s)
	}
	return hw, nil
}

func validUUID(u string) bool {
	if len(u) > 64 {
		return false
	}
	for _, c := range u {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '-') {
			return false
		}
	}
	return true
}

func hyphenMAC(mac net.HardwareAddr) string { return strings.ReplaceAll(mac.String(), ":", "-") }

// chainScript asks iPXE to come back with its MAC, UUID and platform.
func chainScript(r *http.Request) string {
	return fmt.Sprintf("#!ipxe\nchain %s://%s%s?mac=${mac:hexhyp}&uuid=${uuid}&platform=${platform}\n", scheme(r), r.Host, ScriptPath)
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

// imageParams reads the image's boot.ipxe (written by imgbuild) for its
// kernel, initrds and cmdline; without one it boots vmlinuz + initramfs.img
// (after system.cpio, the system image, when it is there).
func (s *Server) imageParams() (netboot.ScriptParams, error) {
	data, err := os.ReadFile(s.artifactPath("boot.ipxe"))
	if errors.Is(err, fs.ErrNotExist) {
		p := netboot.ScriptParams{Title: "image", Kernel: "vmlinuz", Initrds: []string{"initramfs.img"}}
		if fi, err := os.Stat(s.artifactPath("system.cpio")); err == nil && fi.Mode().IsRegular() {
			// First: the uncompressed cpio must start 4-byte aligned (see image.SystemCPIOFile).
			p.Initrds = []string{"system.cpio", "initramfs.img"}
		}
		return p, nil
	}
	if err != nil {
		return netboot.ScriptParams{}, err
	}
	p, err := netboot.ParseScript(data)
	if err != nil {
		return p, fmt.Errorf("%s: %w", s.artifactPath("boot.ipxe"), err)
	}
	return p, nil
}

func (s *Server) handleScript(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ip := remoteIP(r)
	macParam := q.Get("mac")
	if macParam == "" {
		if m := s.seen.macOf(ip); m != "" {
			macParam = m
		} else {
			s.log.Info("boot script: chaining to ask for the MAC", "mac", "", "ip", ip.String())
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprint(w, chainScript(r))
			return
		}
	}
	mac, err := parseMAC(macParam)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	uuid := q.Get("uuid")
	if !validUUID(uuid) {
		http.Error(w, "uuid must be hex digits and hyphens", http.StatusBadRequest)
		return
	}
	uuid = normalizeUUID(uuid)
	log := s.log.With("mac", mac.String(), "ip", ip.String())
	p, err := s.imageParams()
	if err != nil {
		log.Error("boot script: cannot read the image's boot.ipxe", "err", err)
		http.Error(w, "server cannot read the image's boot.ipxe", http.StatusInternalServerError)
		return
	}
	switch q.Get("platform") {
	case "efi":
		p.Platform = netboot.PlatformEFI
	case "pcbios":
		p.Platform = netboot.PlatformBIOS
	}
	p.BaseURL = fmt.Sprintf("%s://%s%s", scheme(r), r.Host, strings.TrimSuffix(ArtifactsPath, "/"))
	if s.cfg.ArtifactsURL != "" {
		p.BaseURL = strings.TrimSuffix(s.cfg.ArtifactsURL, "/")
	}
	configSource, enforced := "none", ""
	if s.cfg.MachinesDir != "" {
		// The script pins the config's URL and sha256: it goes only to
		// whoever may have the config.
		var reason string
		if enforced, reason = s.admit(ip, mac, uuid); reason != "" {
			log.Warn("boot script refused", "uuid", uuid, "reason", reason)
			http.Error(w, "boot script refused: "+reason, http.StatusForbidden)
			return
		}
		rendered, err := s.machines.Render(mac, uuid, seenIP(s.seen, mac))
		switch {
		case errors.Is(err, errNoConfig):
			log.Warn("boot script: no machine config for this MAC, the node boots with its defaults", "uuid", uuid)
		case err != nil:
			log.Error("boot script: machine config does not render", "err", err)
			http.Error(w, "machine config does not render: see the server log", http.StatusInternalServerError)
			return
		default:
			sum := sha256.Sum256(rendered.Data)
			p.ConfigSHA256 = hex.EncodeToString(sum[:])
			p.ConfigURL = s.configURL(r, mac, uuid)
			configSource = rendered.Source
		}
	}
	log.Info("boot script", "uuid", uuid, "platform", q.Get("platform"), "config", configSource, "config_sha256", p.ConfigSHA256,
		"enforced", enforced)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(netboot.Script(p))
}

// admit decides whether a request from ip may have mac's config, selected
// also by uuid ("" for none). It returns what was checked (for the log),
// or why the request is refused.
func (s *Server) admit(ip netip.Addr, mac net.HardwareAddr, uuid string) (enforced, reason string) {
	sg, ok := s.seen.lookup(mac)
	if !ok {
		if !s.cfg.AllowUnseenMACs {
			return "", fmt.Sprintf("%s was not seen in DHCP by this server in the last %s (it must DHCP on netbootd's interface first; "+
				"--allow-unseen-macs serves unseen MACs to anyone)", mac, s.cfg.SightingTTL)
		}
		if owner := s.seen.macOf(ip); owner != "" {
			return "", fmt.Sprintf("%s belongs to %s in DHCP", ip, owner)
		}
		if uuid != "" {
			return "", fmt.Sprintf("uuid %s cannot be checked: %s was not seen in DHCP, and a UUID selects a config only for the MAC that sent it in DHCP (option 97)", uuid, mac)
		}
		return "none", ""
	}
	if !sg.ip.IsValid() {
		return "", fmt.Sprintf("%s has no address in DHCP any more (released, or its address moved to another MAC)", mac)
	}
	if sg.ip != ip {
		return "", fmt.Sprintf("this MAC had %s in DHCP (%s), the request came from %s", sg.ip, sg.how, ip)
	}
	if owner := s.seen.macOf(ip); owner != "" && owner != mac.String() {
		return "", fmt.Sprintf("%s belongs to %s in DHCP", ip, owner)
	}
	enforced = "ip:" + sg.how
	switch arp, reason := s.checkNeighbour(ip, mac); {
	case reason != "":
		return "", reason
	case arp:
		enforced += "+arp"
	}
	if uuid != "" && !sg.uuidMatches(uuid) {
		if sg.uuid == "" {
			return "", fmt.Sprintf("uuid %s was not sent in DHCP by %s (it sent none), so it cannot select a config", uuid, mac)
		}
		return "", fmt.Sprintf("uuid %s is not the one %s sent in DHCP (%s), so it cannot select a config", uuid, mac, sg.uuid)
	}
	return enforced, ""
}

// checkNeighbour compares the kernel's neighbour entry of ip with mac: it
// reports whether an entry vouched for mac, or why the request is refused.
// Without an entry (loopback, a routed client) nothing is checked, except
// inside the DHCP interface's subnet, where the TCP handshake made one.
func (s *Server) checkNeighbour(ip netip.Addr, mac net.HardwareAddr) (bool, string) {
	hws, err := s.cfg.neighbours(ip)
	if err != nil {
		s.log.Error("config: cannot read the neighbour table", "err", err)
		return false, "the server cannot read its neighbour (ARP) table: see its log"
	}
	for _, hw := range hws {
		if bytes.Equal(hw, mac) {
			return true, ""
		}
	}
	if len(hws) > 0 {
		return false, fmt.Sprintf("%s is at %s in the server's ARP table, not at %s", ip, hws[0], mac)
	}
	if s.dhcp != nil && s.dhcp.subnet.Contains(ip) {
		return false, fmt.Sprintf("the server has no ARP entry for %s on its DHCP network, so it cannot check that %s sent the request", ip, mac)
	}
	return false, ""
}

func seenIP(sn *seen, mac net.HardwareAddr) string {
	if sg, ok := sn.ipOf(mac); ok {
		return sg.ip.String()
	}
	return ""
}

// configURL is where the node fetches its config: HTTPS on the same host
// when a certificate is configured, else the URL the script came from.
func (s *Server) configURL(r *http.Request, mac net.HardwareAddr, uuid string) string {
	u := url.URL{Scheme: scheme(r), Host: r.Host, Path: ConfigPrefix + hyphenMAC(mac)}
	if s.httpsLn != nil && r.TLS == nil {
		host := r.Host
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			host = h
		}
		_, port, _ := net.SplitHostPort(s.httpsLn.Addr().String())
		u.Scheme, u.Host = "https", net.JoinHostPort(host, port)
	}
	if uuid != "" {
		u.RawQuery = "uuid=" + uuid
	}
	return u.String()
}

func (s *Server) handleConfig(w http.ResponseWriter, r *http.Request) {
	ip := remoteIP(r)
	mac, err := parseMAC(r.PathValue("mac"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	uuid := r.URL.Query().Get("uuid")
	if !validUUID(uuid) {
		http.Error(w, "uuid must be hex digits and hyphens", http.StatusBadRequest)
		return
	}
	uuid = normalizeUUID(uuid)
	log := s.log.With("mac", mac.String(), "ip", ip.String(), "uuid", uuid)
	refuse := func(reason string) {
		log.Warn("config refused", "reason", reason)
		http.Error(w, "config refused: "+reason, http.StatusForbidden)
	}
	if s.httpsLn != nil && r.TLS == nil {
		refuse("configs are served over HTTPS only")
		return
	}
	enforced, reason := s.admit(ip, mac, uuid)
	if reason != "" {
		refuse(reason)
		return
	}
	if s.cfg.MachinesDir == "" {
		http.Error(w, "this server has no machines directory", http.StatusNotFound)
		return
	}
	rendered, err := s.machines.Render(mac, uuid, seenIP(s.seen, mac))
	if errors.Is(err, errNoConfig) {
		log.Warn("config not found")
		http.Error(w, "no config for this machine", http.StatusNotFound)
		return
	}
	if err != nil {
		log.Error("config does not render", "err", err)
		http.Error(w, "machine config does not render: see the server log", http.StatusInternalServerError)
		return
	}
	sum := sha256.Sum256(rendered.Data)
	log.Info("config served", "source", rendered.Source, "group", rendered.Machine.Group,
		"sha256", hex.EncodeToString(sum[:]), "enforced", enforced)
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("ETag", `"`+hex.EncodeToString(sum[:])+`"`)
	w.Write(rendered.Data)
}

func (s *Server) handleArtifact(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ip := remoteIP(r)
	// OpenInRoot refuses names that leave the directory, symlinks included.
	f, err := os.OpenInRoot(s.cfg.ArtifactsDir, name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.NotFound(w, r)
		return
	}
	sum, err := s.hashes.sum(name, f, fi)
	if err != nil {
		s.log.Error("artifact: hashing failed", "file", name, "err", err)
		http.Error(w, "cannot read "+name, http.StatusInternalServerError)
		return
	}
	s.log.Info("artifact", "mac", s.seen.macOf(ip), "ip", ip.String(), "file", name, "kind", s.artifactKind(name),
		"range", r.Header.Get("Range"), "size", fi.Size())
	w.Header().Set("ETag", `"`+sum+`"`)
	w.Header().Set("Cache-Control", "no-cache")
	// A type set here spares ServeContent reading the file to sniff one.
	ctype := mime.TypeByExtension(filepath.Ext(name))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ctype)
	http.ServeContent(w, r, name, fi.ModTime(), f)
}

func (s *Server) artifactKind(name string) string {
	p, err := s.imageParams()
	if err != nil {
		return "file"
	}
	if name == p.Kernel {
		return "kernel"
	}
	for _, i := range p.Initrds {
		if name == i {
			return "initrd"
		}
	}
	return "file"
}
