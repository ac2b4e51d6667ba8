// Package lab runs a ballast cluster on this machine for operators trying
// ballast and for the tests: `nodectl lab up|status|down`. A provisioner
// makes the nodes; today's is "container": each node is the image's agent
// as PID 1 of a runc container on the host's kernel (see ContainerSpec),
// on a private bridge with the lab's gateway address on the host.
//
// Everything a lab makes is recorded in its directory (lab.json) before it
// is made, so Down removes a half-made lab too.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
)

// Provisioners: ProvisionerContainer runs nodes as runc containers on the
// host's kernel; ProvisionerQEMU boots them as QEMU VMs from the image's
// kernel, initramfs and raw disk (the real boot path).
const (
	ProvisionerContainer = "container"
	ProvisionerQEMU      = "qemu"
)

// StateFile is the lab's record in its directory.
const StateFile = "lab.json"

// Options say what lab to make.
// DefaultSubnet is the lab bridge's subnet unless --subnet says otherwise:
// from the RFC 2544 benchmarking range, which no real service uses.
const DefaultSubnet = "198.19.0.0/24"

type Options struct {
	Name        string // lab name: [a-z0-9]{1,8}; default "lab"
	Dir         string // lab directory; default DefaultDir(Name)
	Provisioner string // "container" or "qemu"
	// WorkerProvisioner makes the workers; default Provisioner (e.g.
	// container control planes and a VM worker).
	WorkerProvisioner string
	ControlPlanes     int
	Workers           int
	// Subnet of the lab's bridge; the host gets its first address (the
	// nodes' gateway), the API VIP the second, nodes the following ones.
	// Default DefaultSubnet (RFC 2544 benchmarking range: never a real destination).
	Subnet string
	// Runc is the runc binary; default the payload's.
	Runc string
	// Initramfs and SystemImage are the image's artifacts (imgbuild's
	// initramfs.img and system.sqfs): the nodes run the agent and the
	// system image from them, the same bytes a machine boots.
	Initramfs, SystemImage string
	// VM is what QEMU nodes boot: the kernel, the initramfs and the raw
	// disk image (imgbuild's vmlinuz, initramfs.img and RECIPE.raw); VMAccel
	// is QEMU's accelerator (default tcg).
	VM      VMArtifacts
	VMAccel string
	// DNSServers are the nodes' upstream resolvers (network.dns.servers);
	// none by default: the lab has no way out.
	DNSServers []string
	// Firewall turns on the nodes' inbound firewall (network.firewall),
	// with the lab host allowed to reach etcd's client port (the lab reads
	// etcd's member list from there).
	Firewall bool
	Log      *slog.Logger
}

// VMArtifacts are the image files a QEMU node boots from.
type VMArtifacts struct {
	Kernel    string `json:"kernel"`
	Initramfs string `json:"initramfs"`
	Disk      string `json:"disk"`
}

// State is what a lab is made of, kept in Dir/lab.json.
type State struct {
	Name        string `json:"name"`
	Dir         string `json:"dir"`
	Provisioner string `json:"provisioner"`
	Subnet      string `json:"subnet"`
	Gateway     string `json:"gateway"` // the host's address on the bridge
	APIVIP      string `json:"apiVIP"`
	Bridge      string `json:"bridge"`
	Runc        string `json:"runc"`
	Initramfs   string `json:"initramfs"`
	SystemImage string `json:"systemImage"`
	// SystemMount is where the system image is mounted on the host; empty
	// until it is.
	SystemMount string `json:"systemMount,omitempty"`
	// CgroupParent holds the nodes' cgroups in every hierarchy.
	CgroupParent string `json:"cgroupParent"`
	// VM and VMAccel are for QEMU nodes.
	VM         VMArtifacts `json:"vm"`
	VMAccel    string      `json:"vmAccel,omitempty"`
	DNSServers []string    `json:"dnsServers,omitempty"`
	Firewall   bool        `json:"firewall,omitempty"`
	Nodes      []Node      `json:"nodes"`
}

// Node is one node of a lab.
type Node struct {
	Name    string `json:"name"`
	Role    string `json:"role"`
	Address string `json:"address"`
	// Provisioner made the node: ProvisionerContainer or ProvisionerQEMU.
	Provisioner string `json:"provisioner"`
	Netns       string `json:"netns,omitempty"` // a container node's network namespace
	HostVeth    string `json:"hostVeth"`        // the bridge end of its eth0: a veth, or a VM's tap
	Container   string `json:"container"`       // runc container id, or the VM's name
}

// Paths of a node's files in the lab directory.
func (s *State) nodeDir(n Node) string      { return filepath.Join(s.Dir, "nodes", n.Name) }
func (s *State) bundle(n Node) string       { return filepath.Join(s.nodeDir(n), "bundle") }
func (s *State) stateDir(n Node) string     { return filepath.Join(s.nodeDir(n), "state") }
func (s *State) pkiDir() string             { return filepath.Join(s.Dir, "pki") }
func (s *State) runcRoot() string           { return filepath.Join(s.Dir, "runc") }
func (s *State) systemDir() string          { return filepath.Join(s.Dir, "system") }
func (s *State) NodeConfig() string         { return filepath.Join(s.Dir, "nodeconfig.yaml") }
func (s *State) ConsoleLog(n Node) string   { return filepath.Join(s.nodeDir(n), "console.log") }
func (s *State) NodeStateDir(n Node) string { return s.stateDir(n) }

// DefaultDir is ~/.cache/ballast/lab/<name>.
func DefaultDir(name string) string {
	home, err := os.UserCacheDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, "ballast", "lab", name)
}

var labName = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// plan turns options into the lab's state (nothing made yet).
func plan(o Options) (*State, error) {
	if o.Name == "" {
		o.Name = "lab"
	}
	if !labName.MatchString(o.Name) {
		return nil, fmt.Errorf("--name %q: use 1 to 8 lowercase letters or digits (it names the bridge and veths, 15 bytes at most)", o.Name)
	}
	if o.WorkerProvisioner == "" {
		o.WorkerProvisioner = o.Provisioner
	}
	for flag, p := range map[string]string{"--provisioner": o.Provisioner, "--worker-provisioner": o.WorkerProvisioner} {
		if p != ProvisionerContainer && p != ProvisionerQEMU {
			return nil, fmt.Errorf("%s %q: use %q or %q", flag, p, ProvisionerContainer, ProvisionerQEMU)
		}
	}
	if o.VMAccel == "" {
		o.VMAccel = "tcg"
	}
	if o.ControlPlanes < 1 || o.ControlPlanes > 9 || o.Workers < 0 || o.Workers > 9 {
		return nil, fmt.Errorf("--control-planes %d --workers %d: a lab has 1 to 9 control planes and 0 to 9 workers", o.ControlPlanes, o.Workers)
	}
	if o.Subnet == "" {
		o.Subnet = DefaultSubnet
	}
	prefix, err := netip.ParsePrefix(o.Subnet)
	if err != nil || !prefix.Addr().Is4() || prefix.Bits() > 26 {
		return nil, fmt.Errorf("--subnet %q: want an IPv4 prefix of /26 or larger, e.g. %s", o.Subnet, DefaultSubnet)
	}
	prefix = prefix.Masked()
	if o.Dir == "" {
		o.Dir = DefaultDir(o.Name)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	nth := func(i int) netip.Addr {
		a := prefix.Addr().As4()
		a[3] += byte(i)
		return netip.AddrFrom4(a)
	}
	s := &State{
		Name: o.Name, Dir: dir, Provisioner: o.Provisioner, Subnet: prefix.String(),
		Gateway: nth(1).String(), APIVIP: nth(2).String(), Bridge: "bl-" + o.Name,
		Runc: o.Runc, Initramfs: o.Initramfs, SystemImage: o.SystemImage,
		CgroupParent: "/ballast-lab-" + o.Name, VM: o.VM, VMAccel: o.VMAccel, DNSServers: o.DNSServers,
		Firewall: o.Firewall,
	}
	add := func(role, name string, addr netip.Addr) {
		i := len(s.Nodes)
		n := Node{
			Name: name, Role: role, Address: addr.String(), Provisioner: o.Provisioner,
			HostVeth:  fmt.Sprintf("bl%s-%d", o.Name, i),
			Container: "ballast-" + o.Name + "-" + name,
		}
		if role == RoleWorker {
			n.Provisioner = o.WorkerProvisioner
		}
		if n.Provisioner == ProvisionerContainer {
			n.Netns = "ballast-" + o.Name + "-" + name
		}
		s.Nodes = append(s.Nodes, n)
	}
	for i := 1; i <= o.ControlPlanes; i++ {
		add(RoleControlPlane, fmt.Sprintf("cp-%d", i), nth(10+i))
	}
	for i := 1; i <= o.Workers; i++ {
		add(RoleWorker, fmt.Sprintf("worker-%d", i), nth(20+i))
	}
	return s, nil
}

// Load reads the lab in dir.
func Load(dir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab in %s (no %s): start one with `nodectl lab up`", dir, StateFile)
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	return &s, nil
}

func (s *State) save() error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.Dir, StateFile+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.Dir, StateFile))
}
