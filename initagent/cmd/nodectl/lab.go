package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/lab"
)

// runLab makes, shows and removes a lab cluster on this machine:
//
//	nodectl lab up [--control-planes 1] [--workers 0] [--provisioner container|qemu] [--worker-provisioner P]
//	               [--artifacts out/control-plane] [--vm-artifacts DIR] [--vm-accel tcg|kvm] [--dns ADDR,...] [--firewall] [--wait 15m]
//	nodectl lab status [-o json]
//	nodectl lab down [--keep]
//	nodectl lab stop|start --node NAME   (a power cut; a boot, also after the node rebooted)
//
// Every command takes --name (default lab) and --dir (default
// ~/.cache/ballast/lab/NAME).
func runLab(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: nodectl lab up|status|down [flags]")
	}
	fs := flag.NewFlagSet("nodectl lab "+args[0], flag.ContinueOnError)
	name := fs.String("name", "lab", "lab name (1 to 8 lowercase letters or digits)")
	dir := fs.String("dir", "", "lab directory (default ~/.cache/ballast/lab/NAME)")
	cps := fs.Int("control-planes", 1, "up: control-plane nodes")
	workers := fs.Int("workers", 0, "up: worker nodes")
	provisioner := fs.String("provisioner", lab.ProvisionerContainer, "up: how nodes run: container (runc on this kernel) or qemu (VMs)")
	workerProvisioner := fs.String("worker-provisioner", "", "up: how workers run (default: --provisioner)")
	vmArtifacts := fs.String("vm-artifacts", "", "up: imgbuild's output the QEMU nodes boot (vmlinuz, initramfs.img, RECIPE.raw; default --artifacts)")
	vmAccel := fs.String("vm-accel", "tcg", "up: QEMU accelerator: tcg or kvm")
	artifacts := fs.String("artifacts", "out/control-plane", "up: imgbuild's output directory with initramfs.img and system.sqfs")
	initramfs := fs.String("initramfs", "", "up: initramfs.img (default: in --artifacts)")
	system := fs.String("system", "", "up: system.sqfs (default: in --artifacts)")
	runc := fs.String("runc", "", "up: runc binary (default: the payload's)")
	subnet := fs.String("subnet", "", "up: the lab bridge's IPv4 subnet (default "+lab.DefaultSubnet+")")
	dnsServers := fs.String("dns", "", "up: the nodes' upstream DNS servers, comma-separated (default none)")
	firewall := fs.Bool("firewall", false, "up: turn on the nodes' inbound firewall (network.firewall)")
	wait := fs.Duration("wait", 15*time.Minute, "up: wait this long for every node to be Ready (0: do not wait)")
	keep := fs.Bool("keep", false, "down: keep the lab directory (nodes' STATE, console logs, credentials)")
	output := fs.String("o", "table", "status: table or json")
	node := fs.String("node", "", "stop, start: the node")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *dir == "" {
		*dir = lab.DefaultDir(*name)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	switch args[0] {
	case "up":
		if *initramfs == "" {
			*initramfs = filepath.Join(*artifacts, "initramfs.img")
		}
		if *system == "" {
			*system = filepath.Join(*artifacts, "system.sqfs")
		}
		if *vmArtifacts == "" {
			*vmArtifacts = *artifacts
		}
		vm, err := vmFiles(*vmArtifacts)
		if err != nil && (*provisioner == lab.ProvisionerQEMU || *workerProvisioner == lab.ProvisionerQEMU) {
			return err
		}
		start := time.Now()
		s, err := lab.Up(ctx, lab.Options{Name: *name, Dir: *dir, Provisioner: *provisioner, WorkerProvisioner: *workerProvisioner,
			ControlPlanes: *cps, Workers: *workers, Subnet: *subnet, Runc: *runc, Initramfs: *initramfs, SystemImage: *system,
			VM: vm, VMAccel: *vmAccel, DNSServers: splitList(*dnsServers), Firewall: *firewall, Log: log})
		if err != nil {
			if s != nil {
				return fmt.Errorf("%w\nwhat was made is recorded: remove it with `nodectl lab down --dir %s`", err, s.Dir)
			}
			return err
		}
		if *wait > 0 {
			wctx, cancel := context.WithTimeout(ctx, *wait)
			defer cancel()
			err := s.Wait(wctx, func(st []lab.NodeStatus) {
				fmt.Fprintf(out, "%6.0fs ", time.Since(start).Seconds())
				for _, n := range st {
					fmt.Fprintf(out, " %s: %s", n.Name, n.Progress)
				}
				fmt.Fprintln(out)
			})
			if err != nil {
				return fmt.Errorf("%w\nconsole logs: %s/nodes/*/console.log", err, s.Dir)
			}
			fmt.Fprintf(out, "all %d nodes Ready in %s\n", len(s.Nodes), time.Since(start).Round(time.Second))
		}
		fmt.Fprintf(out, "lab %s is up on bridge %s (%s, gateway %s, API VIP %s)\n", s.Name, s.Bridge, s.Subnet, s.Gateway, s.APIVIP)
		fmt.Fprintf(out, "  nodectl --nodeconfig %s status\n", s.NodeConfig())
		fmt.Fprintf(out, "  kubectl --kubeconfig %s get nodes\n", s.AdminKubeconfig())
		fmt.Fprintf(out, "  console logs: %s/nodes/NODE/console.log\n", s.Dir)
		fmt.Fprintf(out, "  nodectl lab down --dir %s\n", s.Dir)
		return nil
	case "status":
		s, err := lab.Load(*dir)
		if err != nil {
			return err
		}
		st, err := s.Status(ctx)
		if err != nil {
			return err
		}
		if *output == "json" {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tROLE\tADDRESS\tCONTAINER\tPROGRESS\tETCD\tPHASE\tLAST ERROR")
		for _, n := range st {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Role, n.Address, n.Container, n.Progress, n.Etcd, n.Phase, n.LastError)
		}
		return tw.Flush()
	case "down":
		return lab.Down(*dir, *keep, log)
	case "stop", "start":
		s, err := lab.Load(*dir)
		if err != nil {
			return err
		}
		n, err := s.Node(*node)
		if err != nil {
			return err
		}
		if args[0] == "stop" {
			return s.Stop(n)
		}
		return s.Start(n)
	}
	return fmt.Errorf("unknown lab command %q: use up, status, stop, start or down", args[0])
}

// vmFiles finds what a QEMU node boots in imgbuild's output directory.
func vmFiles(dir string) (lab.VMArtifacts, error) {
	raws, _ := filepath.Glob(filepath.Join(dir, "*.raw"))
	if len(raws) != 1 {
		return lab.VMArtifacts{}, fmt.Errorf("--vm-artifacts %s: want exactly one RECIPE.raw there, found %d: build the image (`make image`)", dir, len(raws))
	}
	return lab.VMArtifacts{Kernel: filepath.Join(dir, "vmlinuz"), Initramfs: filepath.Join(dir, "initramfs.img"), Disk: raws[0]}, nil
}
