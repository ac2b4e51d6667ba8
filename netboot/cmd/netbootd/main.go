// Command netbootd serves ballast images to diskless machines: iPXE over
// TFTP, boot scripts, kernel and initramfs over HTTP, per-machine configs,
// and DHCP (proxyDHCP next to the site's server, or full for a lab).
//
//	netbootd --artifacts out/control-plane --machines machines/ --listen-http :8080 \
//	    --tftp :69 --dhcp-mode proxy --interface eth0
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ballast-os/ballast/netboot/server"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "netbootd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("netbootd", flag.ContinueOnError)
	var (
		cfg         server.Config
		dhcpMode    = fs.String("dhcp-mode", "off", "proxy (next to the site's DHCP server), full (isolated lab network) or off")
		rangeFlag   = fs.String("range", "", "full mode: addresses to hand out, FIRST-LAST")
		router      = fs.String("router", "", "full mode: default gateway handed out")
		dns         = fs.String("dns", "", "full mode: DNS servers handed out, comma-separated")
		serverIP    = fs.String("server-ip", "", "address put into DHCP answers (default: the interface's first IPv4 address)")
		leaseTime   = fs.Duration("lease-time", time.Hour, "full mode: lease time")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		requireDHCP = fs.Bool("require-dhcp", false, "deprecated, no effect: configs go only to MACs seen in DHCP unless --allow-unseen-macs")
	)
	fs.StringVar(&cfg.ArtifactsDir, "artifacts", "", "imgbuild output directory (vmlinuz, initramfs.img, boot.ipxe, manifest.json)")
	fs.StringVar(&cfg.ArtifactsURL, "artifacts-url", "", "URL of a static server or CDN holding a copy of --artifacts; boot scripts fetch the kernel and initrds from there")
	fs.StringVar(&cfg.MachinesDir, "machines", "", "directory of per-machine configs: <mac>.yaml, <uuid>.yaml, groups.yaml")
	fs.StringVar(&cfg.HTTPAddr, "listen-http", ":8080", "HTTP listen address")
	fs.StringVar(&cfg.HTTPSAddr, "listen-https", ":8443", "HTTPS listen address, used with --tls-cert")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate: configs are then served over HTTPS only")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	fs.StringVar(&cfg.TFTPAddr, "tftp", ":69", "TFTP listen address for the iPXE binaries; empty disables TFTP")
	fs.StringVar(&cfg.IPXEDir, "ipxe-dir", server.DefaultIPXEDir, "directory with undionly.kpxe and ipxe.efi (Debian package ipxe)")
	fs.StringVar(&cfg.Interface, "interface", "", "interface DHCP answers on")
	fs.BoolVar(&cfg.AllowUnseenMACs, "allow-unseen-macs", false,
		"serve configs and boot scripts to MACs this server has not seen in DHCP (e.g. booted by another DHCP server), to anyone who asks")
	fs.DurationVar(&cfg.SightingTTL, "sighting-ttl", 0, "how long a MAC's DHCP sighting vouches for its address (default: --lease-time)")
	fs.IntVar(&cfg.MaxSightings, "max-sightings", server.DefaultMaxSightings, "most MACs remembered from DHCP; the least recently seen is forgotten first")
	fs.IntVar(&cfg.TFTPMaxTransfers, "tftp-max-transfers", server.DefaultTFTPMaxTransfers, "most TFTP transfers at once")
	fs.IntVar(&cfg.TFTPMaxPerSource, "tftp-max-per-source", server.DefaultTFTPMaxPerSource, "most TFTP transfers at once from one IP address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: every setting is a --flag", fs.Args())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", *logLevel)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg.Log = log
	if *requireDHCP {
		if cfg.AllowUnseenMACs {
			return errors.New("--require-dhcp and --allow-unseen-macs contradict each other: drop --require-dhcp (refusing unseen MACs is the default now)")
		}
		log.Warn("--require-dhcp is deprecated and has no effect: MACs not seen in DHCP are refused by default (--allow-unseen-macs serves them)")
	}
	for name, v := range map[string]int{"--max-sightings": cfg.MaxSightings, "--tftp-max-transfers": cfg.TFTPMaxTransfers, "--tftp-max-per-source": cfg.TFTPMaxPerSource} {
		if v < 1 {
			return fmt.Errorf("%s %d: give a positive number", name, v)
		}
	}
	if cfg.SightingTTL < 0 {
		return fmt.Errorf("--sighting-ttl %s must not be negative", cfg.SightingTTL)
	}
	cfg.DHCPMode = server.DHCPMode(*dhcpMode)
	cfg.LeaseTime = *leaseTime
	var err error
	if *rangeFlag != "" {
		first, last, ok := strings.Cut(*rangeFlag, "-")
		if cfg.RangeStart, err = netip.ParseAddr(strings.TrimSpace(first)); !ok || err != nil {
			return fmt.Errorf("--range %q: write FIRST-LAST, e.g. 192.0.2.100-192.0.2.150", *rangeFlag)
		}
		if cfg.RangeEnd, err = netip.ParseAddr(strings.TrimSpace(last)); err != nil {
			return fmt.Errorf("--range %q: write FIRST-LAST, e.g. 192.0.2.100-192.0.2.150", *rangeFlag)
		}
	}
	if *router != "" {
		if cfg.Router, err = netip.ParseAddr(*router); err != nil {
			return fmt.Errorf("--router %q is not an IP address", *router)
		}
	}
	if *dns != "" {
		for _, s := range strings.Split(*dns, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("--dns: %q is not an IP address", s)
			}
			cfg.DNS = append(cfg.DNS, a)
		}
	}
	if *serverIP != "" {
		if cfg.ServerIP, err = netip.ParseAddr(*serverIP); err != nil {
			return fmt.Errorf("--server-ip %q is not an IP address", *serverIP)
		}
	}
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := srv.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
