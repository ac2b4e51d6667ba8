package lab

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/config/source"
)

func TestPlanAddressesAndRefusals(t *testing.T) {
	s, err := plan(Options{Name: "x1", Provisioner: ProvisionerContainer, ControlPlanes: 3, Workers: 1, Subnet: "198.18.4.0/24", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if s.Gateway != "198.18.4.1" || s.APIVIP != "198.18.4.2" || s.Bridge != "bl-x1" {
		t.Errorf("gateway %s, VIP %s, bridge %s", s.Gateway, s.APIVIP, s.Bridge)
	}
	var got []string
	seen := map[string]bool{}
	for _, n := range s.Nodes {
		got = append(got, n.Name+"="+n.Address+"/"+n.Role)
		for _, name := range []string{"veth " + n.HostVeth, "netns " + n.Netns, "container " + n.Container} {
			if seen[name] {
				t.Errorf("%s used twice", name)
			}
			seen[name] = true
		}
		if len(n.HostVeth) > 15 {
			t.Errorf("veth name %q longer than IFNAMSIZ-1", n.HostVeth)
		}
	}
	want := []string{"cp-1=198.18.4.11/control-plane", "cp-2=198.18.4.12/control-plane", "cp-3=198.18.4.13/control-plane", "worker-1=198.18.4.21/worker"}
	if !slices.Equal(got, want) {
		t.Errorf("nodes %v, want %v", got, want)
	}
	mixed, err := plan(Options{Name: "x3", Provisioner: ProvisionerContainer, WorkerProvisioner: ProvisionerQEMU, ControlPlanes: 1, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if cp, w := mixed.Nodes[0], mixed.Nodes[1]; cp.Provisioner != ProvisionerContainer || cp.Netns == "" ||
		w.Provisioner != ProvisionerQEMU || w.Netns != "" || mixed.VMAccel != "tcg" {
		t.Errorf("mixed lab: %+v %+v accel %q", cp, w, mixed.VMAccel)
	}
	for _, o := range []Options{
		{Name: "Bad_Name", Provisioner: ProvisionerContainer, ControlPlanes: 1},
		{Name: "toolongname", Provisioner: ProvisionerContainer, ControlPlanes: 1},
		{Provisioner: "docker", ControlPlanes: 1},
		{Provisioner: ProvisionerContainer, WorkerProvisioner: "vbox", ControlPlanes: 1, Workers: 1},
		{Provisioner: ProvisionerContainer, ControlPlanes: 0},
		{Provisioner: ProvisionerContainer, ControlPlanes: 1, Subnet: "2001:db8::/64"},
		{Provisioner: ProvisionerContainer, ControlPlanes: 1, Subnet: "10.0.0.0/28"},
	} {
		if _, err := plan(o); err == nil {
			t.Errorf("plan(%+v) accepted", o)
		}
	}
}

// TestMachineConfigs: every node's config passes the agent's parser and
// carries the cluster as the lab made it.
func TestMachineConfigs(t *testing.T) {
	s, err := plan(Options{Name: "x2", Provisioner: ProvisionerContainer, ControlPlanes: 3, Workers: 1, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	_, apiCA, err := pki.NewAuthority("api", 0)
	if err != nil {
		t.Fatal(err)
	}
	ca, _, err := pki.NewAuthority("node api", 0)
	if err != nil {
		t.Fatal(err)
	}
	cluster, err := pki.NewClusterSecrets(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sec := Secrets{APICACert: apiCA.CertPEM, Cluster: cluster}
	for _, n := range s.Nodes {
		cred, err := ca.Issue(pki.Request{CommonName: n.Name, Server: true})
		if err != nil {
			t.Fatal(err)
		}
		data, err := MachineConfig(s, n, sec, NodeCredentials{CertPEM: cred.CertPEM, KeyPEM: cred.KeyPEM})
		if err != nil {
			t.Fatal(err)
		}
		cfg, _, err := config.Parse(data)
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		c := cfg.Cluster
		if c.Role != n.Role || !slices.Equal(c.APIVIPs, []string{s.APIVIP}) || !cfg.API.Enabled() {
			t.Errorf("%s: role %s, VIPs %v, api enabled %v", n.Name, c.Role, c.APIVIPs, cfg.API.Enabled())
		}
		if got := cfg.Network.Interfaces[0].Addresses; len(got) != 1 || got[0].Address != n.Address+"/24" {
			t.Errorf("%s: addresses %v", n.Name, got)
		}
		var wantServers, wantPeers []string
		for _, o := range s.Nodes {
			if o.Role == RoleControlPlane && o.Name != n.Name {
				wantServers = append(wantServers, o.Address+":6443")
				wantPeers = append(wantPeers, o.Address)
			}
		}
		if n.Role == RoleWorker {
			wantPeers = nil
		}
		if !slices.Equal(c.APIServers, wantServers) || !slices.Equal(c.Peers, wantPeers) {
			t.Errorf("%s: apiServers %v peers %v, want %v %v", n.Name, c.APIServers, c.Peers, wantServers, wantPeers)
		}
		if hasCA := c.CA.Key != ""; hasCA != (n.Role == RoleControlPlane) {
			t.Errorf("%s (%s) has the cluster CA key: %v", n.Name, n.Role, hasCA)
		}
		if c.Token != cluster.Token || c.CA.Certificate != cluster.CA.Certificate {
			t.Errorf("%s: token %q, CA shared %v", n.Name, c.Token, c.CA.Certificate == cluster.CA.Certificate)
		}
		shared := c.EtcdCA.Key != "" && c.FrontProxyCA.Key != "" && c.ServiceAccountKey != ""
		if shared != (n.Role == RoleControlPlane) {
			t.Errorf("%s (%s) carries the etcd/front-proxy CAs and service-account key: %v", n.Name, n.Role, shared)
		}
		for _, p := range c.PodCIDRs {
			if netip.MustParsePrefix(p).Overlaps(netip.MustParsePrefix(s.Subnet)) {
				t.Errorf("pod CIDR %s overlaps the lab subnet", p)
			}
		}
	}
}

func TestContainerSpec(t *testing.T) {
	caps := BoundingCapabilities(0x000001fffeffffff) // all but CAP_SYS_RESOURCE, as on this CI machine
	if slices.Contains(caps, "CAP_SYS_RESOURCE") || !slices.Contains(caps, "CAP_SYS_ADMIN") || len(caps) != len(allCapabilities)-1 {
		t.Errorf("capabilities from the mask: %v", caps)
	}
	sp := ContainerSpec(SpecInput{Hostname: "cp-1", Netns: "/run/netns/n1", CgroupsPath: "/ballast-lab-x/cp-1",
		System: "/lab/system", State: "/lab/nodes/cp-1/state", NoFile: 4096, Capabilities: caps})
	if !slices.Contains(sp.Process.Env, "container=ballast") || sp.Process.Args[0] != "/init" || sp.Hostname != "cp-1" {
		t.Errorf("process %+v hostname %s", sp.Process, sp.Hostname)
	}
	if !slices.Equal(sp.Process.Capabilities.Bounding, caps) || sp.Process.Rlimits[0].Hard != 4096 {
		t.Errorf("caps %v rlimits %v", sp.Process.Capabilities.Bounding, sp.Process.Rlimits)
	}
	ns := map[specs.LinuxNamespaceType]string{}
	for _, n := range sp.Linux.Namespaces {
		ns[n.Type] = n.Path
	}
	for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.UTSNamespace, specs.IPCNamespace, specs.CgroupNamespace} {
		if p, ok := ns[want]; !ok || p != "" {
			t.Errorf("namespace %s: present %v path %q, want a new one", want, ok, p)
		}
	}
	if ns[specs.NetworkNamespace] != "/run/netns/n1" || sp.Linux.CgroupsPath != "/ballast-lab-x/cp-1" {
		t.Errorf("netns %q cgroups %q", ns[specs.NetworkNamespace], sp.Linux.CgroupsPath)
	}
	at := map[string]int{}
	for i, m := range sp.Mounts {
		at[m.Destination] = i
	}
	run, sys, v := at["/run"], at["/run/ballast/system"], at["/var"]
	if sp.Mounts[run].Type != "tmpfs" || run > sys {
		t.Errorf("/run must be a tmpfs mounted before the system image: %+v", sp.Mounts)
	}
	if m := sp.Mounts[sys]; m.Source != "/lab/system" || !slices.Contains(m.Options, "ro") {
		t.Errorf("system image mount %+v", m)
	}
	if m := sp.Mounts[v]; m.Source != "/lab/nodes/cp-1/state" || !slices.Contains(m.Options, "rw") {
		t.Errorf("STATE mount %+v", m)
	}
	if m := sp.Mounts[at["/sys/fs/cgroup"]]; m.Type != "cgroup" || !slices.Contains(m.Options, "rw") {
		t.Errorf("cgroup mount %+v", m)
	}
	var kmsg bool
	for _, d := range sp.Linux.Devices {
		kmsg = kmsg || (d.Path == "/dev/kmsg" && d.Major == 1 && d.Minor == 11)
	}
	if !kmsg || !strings.Contains(sp.Version, "1.") {
		t.Errorf("no /dev/kmsg for kubelet (%v) or version %s", kmsg, sp.Version)
	}
}

func TestMemoryNeeded(t *testing.T) {
	s, err := plan(Options{Name: "m", Provisioner: ProvisionerContainer, ControlPlanes: 3, Workers: 2, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.memoryNeeded(), uint64(3*controlPlaneMemory+2*workerMemory); got != want {
		t.Errorf("memory needed %d, want %d", got, want)
	}
	if avail, ok := memAvailable(); !ok || avail == 0 {
		t.Errorf("MemAvailable not read: %d %v", avail, ok)
	}
}

// TestInitrdWithConfig: the image's initramfs stays byte for byte, and a
// newc archive with the machine config at the embedded path follows on a
// 512-byte boundary (the kernel unpacks concatenated archives in turn).
func TestInitrdWithConfig(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "initramfs.img")
	image := []byte("(an LZ4-compressed newc archive, 37 b)")
	if err := os.WriteFile(base, image, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd.img")
	if err := writeInitrdWithConfig(base, out, []byte("kind: MachineConfig\n")); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, image) || !bytes.Equal(data[len(image):512], make([]byte, 512-len(image))) {
		t.Fatalf("the image's initramfs is not kept whole and padded to 512 bytes")
	}
	files := map[string]string{}
	err = cpio.ForEachRecord(cpio.Newc.Reader(bytes.NewReader(data[512:])), func(r cpio.Record) error {
		if r.Mode&cpio.S_IFMT == cpio.S_IFREG {
			b, err := io.ReadAll(io.NewSectionReader(r, 0, int64(r.FileSize)))
			files[r.Name] = string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := files[strings.TrimPrefix(source.EmbeddedPath, "/")]; got != "kind: MachineConfig\n" {
		t.Errorf("appended archive %v, want the config at %s", files, source.EmbeddedPath)
	}
}

// TestSubnetFreeRefusesACoveredSubnet: a lab subnet an existing route
// covers is refused, naming the route; a free one passes.
func TestSubnetFreeRefusesACoveredSubnet(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	errs := make(chan [2]error, 1)
	go func() {
		goruntime.LockOSThread() // the thread ends with the goroutine, and its namespace with it
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errs <- [2]error{err}
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err == nil {
			err = netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 51, 100, 1), Mask: net.CIDRMask(24, 32)}})
		}
		if err != nil {
			errs <- [2]error{err}
			return
		}
		errs <- [2]error{subnetFree("198.51.100.0/26"), subnetFree(DefaultSubnet)}
	}()
	r := <-errs
	if r[0] == nil || !strings.Contains(r[0].Error(), "overlaps the route to 198.51.100.0/24 dev lo") {
		t.Errorf("covered subnet: %v, want an error naming the route", r[0])
	}
	if r[1] != nil {
		t.Errorf("free subnet: %v", r[1])
	}
}
