// Package server is the ballast netboot server (command netbootd): it
// serves an image's artifacts and per-machine configs over HTTP(S), iPXE
// binaries over TFTP, and answers DHCP as a proxyDHCP next to the site's
// server or as the only DHCP server of an isolated lab network.
//
//	srv, err := server.New(server.Config{ArtifactsDir: "out/control-plane", MachinesDir: "machines",
//		HTTPAddr: ":8080", TFTPAddr: ":69", DHCPMode: server.DHCPProxy, Interface: "eth0"})
//	if err != nil { ... }
//	err = srv.Run(ctx)
//
// # Boot flow
//
// A PXE ROM (no DHCP option 175, user class not "iPXE") is handed the iPXE
// binary for its architecture (option 93: 0 → undionly.kpxe, 7 or 9 →
// ipxe.efi) over TFTP; iPXE then asks DHCP again and is handed
// http://SERVER/boot.ipxe?mac=…&platform=…, a script rendered for that
// machine: kernel and initrds from /artifacts/, and, when the machine has a
// config, ballast.config=URL of /config/MAC plus ballast.config.sha256= of
// that config as rendered now.
//
// # What config delivery enforces
//
// GET /config/MAC[?uuid=UUID], and GET /boot.ipxe?mac=MAC[&uuid=UUID] when
// a machines directory is configured (the script pins the config's URL
// and sha256), answer only when all of these hold (otherwise 403 with the
// reason, logged as "config refused" or "boot script refused"):
//   - with a TLS certificate configured, the config request came over HTTPS;
//   - the server saw MAC in DHCP within SightingTTL: the address it leased
//     itself (full mode), or in proxy mode the requested-address option or
//     ciaddr of the client's DHCPREQUEST to the site's server, or the
//     ciaddr of its request on port 4011 — recorded only when the Ethernet
//     frame's source address is MAC (read with a packet socket), so a host
//     cannot record an address for another machine by writing its MAC
//     into chaddr. AllowUnseenMACs serves MACs never seen (or whose
//     sighting expired) without these checks, logged as enforced=none;
//   - the request comes from exactly that address, and the address is not
//     one the server saw for another MAC since;
//   - the kernel's neighbour (ARP) entry of the request's address, if it
//     has one, is MAC; a client inside the DHCP interface's subnet must
//     have one (the TCP handshake made it). This stops a host that took a
//     lease for a forged chaddr from fetching that MAC's config;
//   - a UUID in the URL is the one MAC sent in DHCP (option 97, in either
//     byte order): it may select machines/<uuid>.yaml, a machine entry or
//     a group by UUID only for the machine that sent it. For a MAC not
//     seen (AllowUnseenMACs), a UUID is refused;
//   - MAC (or UUID) has a config: machines/<mac>.yaml, machines/<uuid>.yaml
//     or a matching group in machines/groups.yaml.
//
// Sightings are kept in memory only, at most MaxSightings of them (the
// least recently seen MAC is forgotten first); after a restart every
// machine is refused until it is seen in DHCP again.
//
// All of this trusts layer 2: a host on the same segment that spoofs both
// MAC and IP (frames and ARP) gets that machine's config, and one that
// claims another machine's address in DHCP can make the server refuse that
// machine until it is seen again. A UUID is what the client claims: key
// configs by MAC where untrusted hosts share the boot network. Put secrets
// the node must not leak in its config only when the boot network is
// trusted.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DHCPMode says how the server answers DHCP.
type DHCPMode string

const (
	// DHCPOff: no DHCP; the site's DHCP server points clients at us.
	DHCPOff DHCPMode = "off"
	// DHCPProxy: answer PXE clients with boot information only, no
	// addresses (port 67 offers without yiaddr, and port 4011).
	DHCPProxy DHCPMode = "proxy"
	// DHCPFull: be the network's DHCP server (isolated lab networks).
	DHCPFull DHCPMode = "full"
)

// DefaultIPXEDir is where Debian's ipxe package puts its binaries.
const DefaultIPXEDir = "/usr/lib/ipxe"

// Config configures a Server. ArtifactsDir is required.
type Config struct {
	ArtifactsDir string // imgbuild output: vmlinuz, initramfs.img, boot.ipxe, manifest.json
	MachinesDir  string // per-machine configs and groups.yaml; empty: no configs
	// ArtifactsURL, when set, is where boot scripts tell iPXE to fetch the
	// kernel and initrds (a static server or CDN holding a copy of
	// ArtifactsDir); empty means this server's /artifacts/.
	ArtifactsURL string

	HTTPAddr  string // scripts, artifacts, configs; empty means ":8080"
	HTTPSAddr string // with TLSCert: configs (and everything else); empty means ":8443"
	TLSCert   string
	TLSKey    string

	TFTPAddr string // iPXE binaries; empty: no TFTP
	IPXEDir  string // TFTP root; empty means DefaultIPXEDir

	DHCPMode  DHCPMode // empty means DHCPOff
	Interface string   // DHCP interface (required for proxy and full)
	// ServerIP is the address put into DHCP answers (next-server, server
	// id, URLs); zero means the first IPv4 address of Interface.
	ServerIP netip.Addr
	// Full mode: addresses handed out (inclusive), lease time (zero means
	// one hour), router and DNS servers (optional).
	RangeStart, RangeEnd netip.Addr
	LeaseTime            time.Duration
	Router               netip.Addr
	DNS                  []netip.Addr

	// AllowUnseenMACs serves configs (and config-pinning boot scripts) to
	// MACs this server has not seen in DHCP, e.g. nodes booted by another
	// DHCP server, without any check of who asks. Off by default: unseen
	// MACs are refused.
	AllowUnseenMACs bool
	// SightingTTL is how long a MAC's DHCP sighting vouches for its
	// address; zero means LeaseTime. MaxSightings caps the table (zero
	// means DefaultMaxSightings); the least recently seen MAC goes first.
	SightingTTL  time.Duration
	MaxSightings int

	// TFTPMaxTransfers caps concurrent TFTP transfers (zero means
	// DefaultTFTPMaxTransfers), TFTPMaxPerSource those from one IP address
	// (zero means DefaultTFTPMaxPerSource). Requests beyond them are
	// dropped without an answer; clients retry.
	TFTPMaxTransfers int
	TFTPMaxPerSource int

	Log *slog.Logger // nil means slog.Default()

	// For tests: the clock (nil means time.Now), the neighbour table (nil
	// means the kernel's), and TFTP's unit of its timeout option (zero
	// means a second).
	now        func() time.Time
	neighbours func(netip.Addr) ([]net.HardwareAddr, error)
	tftpUnit   time.Duration
}

// Server is a configured netboot server with its sockets open.
type Server struct {
	cfg      Config
	log      *slog.Logger
	seen     *seen
	hashes   *hashCache
	machines machines

	httpLn  net.Listener
	httpsLn net.Listener
	tftp    *tftpServer
	dhcp    *dhcpServer
}

// New checks cfg and opens every socket, so that a bad flag or a busy port
// is an error here and not in Run.
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ArtifactsDir == "" {
		return nil, errors.New("artifacts directory is empty: pass imgbuild's output directory (vmlinuz, initramfs.img, boot.ipxe)")
	}
	if fi, err := os.Stat(cfg.ArtifactsDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("artifacts directory %q: not a readable directory (%v): pass imgbuild's output directory", cfg.ArtifactsDir, err)
	}
	if cfg.MachinesDir != "" {
		if fi, err := os.Stat(cfg.MachinesDir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("machines directory %q: not a readable directory (%v)", cfg.MachinesDir, err)
		}
		if _, err := (machines{cfg.MachinesDir}).loadGroups(); err != nil {
			return nil, fmt.Errorf("machines directory %s: %w", cfg.MachinesDir, err)
		}
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("tls: give both the certificate and the key, or neither")
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = ":8080"
	}
	if cfg.HTTPSAddr == "" {
		cfg.HTTPSAddr = ":8443"
	}
	if cfg.IPXEDir == "" {
		cfg.IPXEDir = DefaultIPXEDir
	}
	if cfg.DHCPMode == "" {
		cfg.DHCPMode = DHCPOff
	}
	if cfg.LeaseTime == 0 {
		cfg.LeaseTime = time.Hour
	}
	if cfg.SightingTTL == 0 {
		cfg.SightingTTL = cfg.LeaseTime
	}
	if cfg.MaxSightings == 0 {
		cfg.MaxSightings = DefaultMaxSightings
	}
	if cfg.TFTPMaxTransfers == 0 {
		cfg.TFTPMaxTransfers = DefaultTFTPMaxTransfers
	}
	if cfg.TFTPMaxPerSource == 0 {
		cfg.TFTPMaxPerSource = DefaultTFTPMaxPerSource
	}
	if cfg.SightingTTL < 0 || cfg.MaxSightings < 0 || cfg.TFTPMaxTransfers < 0 || cfg.TFTPMaxPerSource < 0 || cfg.LeaseTime < 0 {
		return nil, errors.New("lease time, sighting TTL, max sightings and TFTP limits must not be negative")
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.neighbours == nil {
		cfg.neighbours = kernelNeighbours
	}
	if cfg.tftpUnit == 0 {
		cfg.tftpUnit = time.Second
	}
	s := &Server{cfg: cfg, log: cfg.Log, seen: newSeen(cfg.now, cfg.SightingTTL, cfg.MaxSightings, cfg.Log),
		hashes: newHashCache(), machines: machines{cfg.MachinesDir}}
	if err := s.open(); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *Server) open() error {
	cfg := s.cfg
	var err error

	var tlsConfig *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("tls certificate %s / key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return fmt.Errorf("listen-http %s: %w", cfg.HTTPAddr, err)
	}
	if tlsConfig != nil {
		ln, err := net.Listen("tcp", cfg.HTTPSAddr)
		if err != nil {
			return fmt.Errorf("listen-https %s: %w", cfg.HTTPSAddr, err)
		}
		s.httpsLn = tls.NewListener(ln, tlsConfig)
	}
	if cfg.TFTPAddr != "" {
		if s.tftp, err = newTFTPServer(cfg.TFTPAddr, cfg.IPXEDir, s.log, s.seen, tftpLimits{
			maxTransfers: cfg.TFTPMaxTransfers, maxPerSource: cfg.TFTPMaxPerSource, unit: cfg.tftpUnit}); err != nil {
			return err
		}
	}
	switch cfg.DHCPMode {
	case DHCPOff:
	case DHCPProxy, DHCPFull:
		if s.dhcp, err = newDHCPServer(s); err != nil {
			return err
		}
	default:
		return fmt.Errorf("dhcp mode %q: use proxy (next to the site's DHCP server), full (isolated lab network) or off", cfg.DHCPMode)
	}
	return nil
}

// HTTPAddr is the address the HTTP listener is bound to.
func (s *Server) HTTPAddr() net.Addr { return s.httpLn.Addr() }

// HTTPSAddr is the HTTPS listener's address, nil without TLS.
func (s *Server) HTTPSAddr() net.Addr {
	if s.httpsLn == nil {
		return nil
	}
	return s.httpsLn.Addr()
}

// TFTPAddr is the TFTP socket's address, nil without TFTP.
func (s *Server) TFTPAddr() net.Addr {
	if s.tftp == nil {
		return nil
	}
	return s.tftp.conn.LocalAddr()
}

func (s *Server) close() {
	for _, ln := range []net.Listener{s.httpLn, s.httpsLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if s.tftp != nil {
		s.tftp.close()
	}
	if s.dhcp != nil {
		s.dhcp.close()
	}
}

// Run serves until ctx is done or a listener fails, then closes everything
// and waits for every goroutine it started.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	run := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	h := s.routes()
	var servers []*http.Server
	for _, ln := range []net.Listener{s.httpLn, s.httpsLn} {
		if ln == nil {
			continue
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
		servers = append(servers, srv)
		run("http "+ln.Addr().String(), func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if s.tftp != nil {
		run("tftp", func() error { return s.tftp.serve(ctx) })
	}
	if s.dhcp != nil {
		run("dhcp", func() error { return s.dhcp.serve(ctx) })
	}
	s.log.Info("netboot server up", "http", s.httpLn.Addr().String(), "https", addrString(s.HTTPSAddr()),
		"tftp", addrString(s.TFTPAddr()), "dhcp", string(s.cfg.DHCPMode), "interface", s.cfg.Interface,
		"artifacts", s.cfg.ArtifactsDir, "machines", s.cfg.MachinesDir, "allow_unseen_macs", s.cfg.AllowUnseenMACs,
		"sighting_ttl", s.cfg.SightingTTL.String(), "max_sightings", s.cfg.MaxSightings,
		"tftp_max_transfers", s.cfg.TFTPMaxTransfers, "tftp_max_per_source", s.cfg.TFTPMaxPerSource)

	<-ctx.Done()
	shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	for _, srv := range servers {
		if err := srv.Shutdown(shutdownCtx); err != nil {
			srv.Close()
		}
	}
	s.close()
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	return nil
}

func addrString(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}

func (s *Server) artifactPath(name string) string { return filepath.Join(s.cfg.ArtifactsDir, name) }
