package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config/source"
)

// DefaultRunc is the newest runc in the payload cache
// (~/.cache/ballast/payload/runc-*/runc), "" if there is none.
func DefaultRunc() string {
	cache, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	found, _ := filepath.Glob(filepath.Join(cache, "ballast", "payload", "runc-*", "runc"))
	sort.Strings(found)
	if len(found) == 0 {
		return ""
	}
	return found[len(found)-1]
}

// Up makes the lab and starts its nodes; it returns once every container
// runs (Wait follows them to Ready). A lab that fails half-way is left
// recorded, so Down removes what was made.
func Up(ctx context.Context, o Options) (*State, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Runc == "" {
		o.Runc = DefaultRunc()
	}
	s, err := plan(o)
	if err != nil {
		return nil, err
	}
	if err := preflight(s); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(s.Dir, StateFile)); err == nil {
		return nil, fmt.Errorf("a lab already exists in %s: `nodectl lab status` shows it, `nodectl lab down` removes it", s.Dir)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := s.save(); err != nil {
		return nil, err
	}
	sec, creds, err := s.makePKI()
	if err != nil {
		return s, fmt.Errorf("lab credentials: %w", err)
	}
	if s.has(ProvisionerContainer) {
		if err := s.mountSystem(log); err != nil {
			return s, err
		}
	}
	if err := s.makeBridge(); err != nil {
		return s, err
	}
	for _, n := range s.Nodes {
		if err := s.makeNode(log, n, sec, creds[n.Name]); err != nil {
			return s, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if err := s.Start(n); err != nil {
			return s, fmt.Errorf("node %s: %w", n.Name, err)
		}
		log.Info("node started", "node", n.Name, "role", n.Role, "address", n.Address, "console", s.ConsoleLog(n))
	}
	msg, err := s.Bootstrap(ctx)
	if err != nil {
		return s, err
	}
	log.Info("cluster bootstrap requested", "node", s.Nodes[0].Name, "answer", msg)
	return s, nil
}

// preflight refuses a lab that cannot work, saying what is missing.
func preflight(s *State) error {
	if os.Geteuid() != 0 {
		return errors.New("a lab needs root (network namespaces, bridges, taps, runc)")
	}
	if s.has(ProvisionerContainer) {
		if s.Runc == "" {
			return errors.New("no runc: build the payload (`make payload`) or pass --runc PATH")
		}
		if fi, err := os.Stat(s.Runc); err != nil || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("runc %s is not an executable file: build the payload (`make payload`) or pass --runc PATH", s.Runc)
		}
		for flag, path := range map[string]string{"initramfs": s.Initramfs, "system image": s.SystemImage} {
			if path == "" {
				return fmt.Errorf("no %s: build the image (`make image`) and pass --artifacts out/control-plane", flag)
			}
			if _, err := os.Stat(path); err != nil {
				return fmt.Errorf("%s: %w; build the image (`make image`) and pass --artifacts out/control-plane", flag, err)
			}
		}
	}
	if s.has(ProvisionerQEMU) {
		if err := s.preflightQEMU(); err != nil {
			return err
		}
	}
	if avail, ok := memAvailable(); ok {
		need := s.memoryNeeded()
		if avail < need {
			return fmt.Errorf("not enough memory: the lab's %d nodes need about %d MiB (a container node %d MiB as a control "+
				"plane, %d MiB as a worker; a VM %d MiB, %d MiB), this machine has %d MiB available: fewer nodes "+
				"(--control-planes, --workers) or free memory", len(s.Nodes), need>>20, controlPlaneMemory>>20, workerMemory>>20,
				vmControlPlaneMiB, vmWorkerMiB, avail>>20)
		}
	}
	if err := subnetFree(s.Subnet); err != nil {
		return err
	}
	for _, tool := range []string{"ip", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: install iproute2 and mount", tool)
		}
	}
	return nil
}

// Memory a node uses at Ready, page cache included (measured: a control
// plane ≈ 400 MiB RSS and 1.15 GiB with the imported images' cache; a
// worker less), with headroom for the first minutes.
const (
	controlPlaneMemory = 1200 << 20
	workerMemory       = 600 << 20
)

func (s *State) memoryNeeded() uint64 {
	var need uint64
	for _, n := range s.Nodes {
		switch {
		case n.Provisioner == ProvisionerQEMU:
			need += uint64(vmMemoryMiB(n)) << 20
		case n.Role == RoleControlPlane:
			need += controlPlaneMemory
		default:
			need += workerMemory
		}
	}
	return need
}

// memAvailable is MemAvailable from /proc/meminfo.
func memAvailable() (uint64, bool) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kib, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kib << 10, err == nil
		}
	}
	return 0, false
}

// makePKI creates the lab's node API CA, the operator's client
// certificate, each node's server certificate, the nodeconfig for nodectl,
// and the cluster's Kubernetes CA.
func (s *State) makePKI() (Secrets, map[string]NodeCredentials, error) {
	dir := s.pkiDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Secrets{}, nil, err
	}
	const validity = 365 * 24 * time.Hour
	apiCA, apiCAPair, err := pki.NewAuthority("ballast lab "+s.Name+" node API CA", validity)
	if err != nil {
		return Secrets{}, nil, err
	}
	cluster, err := pki.NewClusterSecrets(validity)
	if err != nil {
		return Secrets{}, nil, err
	}
	client, err := apiCA.Issue(pki.Request{CommonName: "admin", Organization: []string{"ballast:operators"}, Client: true,
		NotAfter: time.Now().Add(validity)})
	if err != nil {
		return Secrets{}, nil, err
	}
	clusterYAML, err := yaml.Marshal(cluster)
	if err != nil {
		return Secrets{}, nil, err
	}
	files := map[string][]byte{
		clusterSecretsFile: clusterYAML,
		"ca.crt":           apiCAPair.CertPEM, "ca.key": apiCAPair.KeyPEM,
		"client-admin.crt": client.CertPEM, "client-admin.key": client.KeyPEM,
		"kubernetes-ca.crt": []byte(cluster.CA.Certificate), "kubernetes-ca.key": []byte(cluster.CA.Key),
		"etcd-ca.crt": []byte(cluster.EtcdCA.Certificate), "etcd-ca.key": []byte(cluster.EtcdCA.Key),
	}
	creds := map[string]NodeCredentials{}
	nc := nodeConfig{Current: s.Nodes[0].Name}
	for _, n := range s.Nodes {
		p, err := apiCA.Issue(pki.Request{CommonName: n.Name, IPs: []net.IP{net.ParseIP(n.Address)}, DNSNames: []string{n.Name},
			Server: true, NotAfter: time.Now().Add(validity)})
		if err != nil {
			return Secrets{}, nil, err
		}
		creds[n.Name] = NodeCredentials{CertPEM: p.CertPEM, KeyPEM: p.KeyPEM}
		nc.Nodes = append(nc.Nodes, nodeConfigEntry{Name: n.Name, Endpoint: net.JoinHostPort(n.Address, "50000"),
			CA: "pki/ca.crt", Certificate: "pki/client-admin.crt", Key: "pki/client-admin.key"})
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return Secrets{}, nil, err
		}
	}
	if err := nc.write(s.NodeConfig()); err != nil {
		return Secrets{}, nil, err
	}
	return Secrets{APICACert: apiCAPair.CertPEM, Cluster: cluster}, creds, nil
}

// mountSystem mounts the system image read-only on the host (a loop
// device the kernel frees on unmount); every node binds it where the
// agent expects its system image.
func (s *State) mountSystem(log *slog.Logger) error {
	dir := s.systemDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	s.SystemMount = dir
	if err := s.save(); err != nil {
		return err
	}
	if err := run("mount", "-t", "squashfs", "-o", "loop,ro,nodev,nosuid", s.SystemImage, dir); err != nil {
		return fmt.Errorf("mount the system image %s: %w (the host needs loop devices and squashfs)", s.SystemImage, err)
	}
	log.Info("system image mounted", "image", s.SystemImage, "at", dir)
	return nil
}

// makeBridge creates the lab's bridge with the host's gateway address.
// The host does not forward (net.ipv4.ip_forward is left as it is), so
// the nodes reach the host and each other, nothing beyond.
func (s *State) makeBridge() error {
	bits := strings.Split(s.Subnet, "/")[1]
	for _, args := range [][]string{
		{"link", "add", s.Bridge, "type", "bridge"},
		{"addr", "add", s.Gateway + "/" + bits, "dev", s.Bridge},
		{"link", "set", s.Bridge, "up"},
	} {
		if err := run("ip", args...); err != nil {
			return fmt.Errorf("lab bridge: %w", err)
		}
	}
	return nil
}

// makeNode creates a node's network namespace (Start plugs its eth0), its
// STATE directory and its bundle (rootfs from the initramfs, cmdline keys,
// machine config, config.json).
func (s *State) makeNode(log *slog.Logger, n Node, sec Secrets, cred NodeCredentials) error {
	if n.Provisioner == ProvisionerQEMU {
		return s.makeVM(n, sec, cred)
	}
	if err := run("ip", "netns", "add", n.Netns); err != nil {
		return err
	}
	if err := os.MkdirAll(s.stateDir(n), 0o755); err != nil {
		return err
	}
	mc, err := MachineConfig(s, n, sec, cred)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.nodeDir(n), "machine-config.yaml"), mc, 0o600); err != nil {
		return err
	}
	spec := ContainerSpec(SpecInput{
		Hostname: n.Name, Netns: filepath.Join("/run/netns", n.Netns), CgroupsPath: s.CgroupParent + "/" + n.Name,
		System: s.SystemMount, State: s.stateDir(n), NoFile: hardNoFile(),
		Capabilities: ownCapabilities(),
	})
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.bundle(n), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.bundle(n), "config.json"), data, 0o600)
}

// plug gives the node a fresh eth0 (a veth on the bridge, always the same
// MAC): a machine's NIC comes up empty at every boot, with no address or
// VIP left from the last one.
func (s *State) plug(n Node) error {
	if linkExists(n.HostVeth) {
		if err := run("ip", "link", "del", n.HostVeth); err != nil {
			return err
		}
	}
	mac := macFor(s.Name, n.Name)
	for _, args := range [][]string{
		{"link", "add", n.HostVeth, "type", "veth", "peer", "name", "eth0", "address", mac.String(), "netns", n.Netns},
		{"link", "set", n.HostVeth, "master", s.Bridge},
		{"link", "set", n.HostVeth, "up"},
	} {
		if err := run("ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// macFor is a node's stable, locally administered unicast MAC.
func macFor(lab, node string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(lab + "/" + node))
	return net.HardwareAddr{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// unplug removes the node's eth0 (both ends of the veth) at once.
func (s *State) unplug(n Node) error {
	if !linkExists(n.HostVeth) {
		return nil
	}
	return run("ip", "link", "del", n.HostVeth)
}

// Start boots a node: a fresh rootfs from the initramfs (a machine's root
// is rebuilt every boot too) and a fresh eth0, then runc runs the agent
// detached with its console going to the node's console log.
func (s *State) Start(n Node) error {
	if n.Provisioner == ProvisionerQEMU {
		return s.startVM(n)
	}
	switch st, _ := s.containerState(n); st {
	case "":
	case "stopped":
		// The node powered off or rebooted (reboot(2) ends its PID namespace).
		if err := run(s.Runc, "--root", s.runcRoot(), "delete", n.Container); err != nil {
			return err
		}
	default:
		return fmt.Errorf("node %s is %s already", n.Name, st)
	}
	if err := s.plug(n); err != nil {
		return err
	}
	rootfs := bundleRootfs(s.bundle(n))
	if err := os.RemoveAll(rootfs); err != nil {
		return err
	}
	if err := ExtractInitramfs(s.Initramfs, rootfs); err != nil {
		return err
	}
	cmdline := "ballast.hostname=" + n.Name + "\n"
	if err := os.WriteFile(filepath.Join(rootfs, boot.ContainerCmdline), []byte(cmdline), 0o644); err != nil {
		return err
	}
	mc, err := os.ReadFile(filepath.Join(s.nodeDir(n), "machine-config.yaml"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rootfs, source.EmbeddedPath), mc, 0o600); err != nil {
		return err
	}
	console, err := os.OpenFile(s.ConsoleLog(n), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer console.Close()
	fmt.Fprintf(console, "--- lab: starting %s at %s\n", n.Container, time.Now().UTC().Format(time.RFC3339))
	// Detached, runc hands the files it was given to the agent as its
	// stdio: they must be the file itself, not a pipe this process waits on.
	cmd := exec.Command(s.Runc, "--root", s.runcRoot(), "run", "--detach", "--bundle", s.bundle(n), n.Container)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, console, console
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("runc run %s: %w: %s", n.Container, err, tail(s.ConsoleLog(n), 3))
	}
	return nil
}

// ExtractInitramfs unpacks imgbuild's initramfs.img (an LZ4-compressed
// newc cpio, after the uncompressed early microcode cpio when the recipe
// has one: a container node runs on the host's CPUs and leaves it out)
// into dir.
func ExtractInitramfs(img, dir string) error {
	raw, err := os.ReadFile(img)
	if err != nil {
		return err
	}
	skip, err := boot.EarlyArchivesEnd(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", img, err)
	}
	data, err := io.ReadAll(lz4.NewReader(bytes.NewReader(raw[skip:])))
	if err != nil {
		return fmt.Errorf("%s: not an LZ4-compressed initramfs: %w", img, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	rr := cpio.Newc.Reader(bytes.NewReader(data))
	return cpio.ForEachRecord(rr, func(r cpio.Record) error {
		if r.Name == "." || r.Name == "" {
			return nil
		}
		if err := cpio.CreateFileInRoot(r, dir, false); err != nil {
			return fmt.Errorf("%s: extract %s: %w", img, r.Name, err)
		}
		return nil
	})
}

// containerState is what `runc state` says of a container ("" if none).
func (s *State) containerState(n Node) (status string, pid int) {
	if n.Provisioner == ProvisionerQEMU {
		return s.vmState(n)
	}
	out, err := exec.Command(s.Runc, "--root", s.runcRoot(), "state", n.Container).Output()
	if err != nil {
		return "", 0
	}
	var st struct {
		Status string `json:"status"`
		Pid    int    `json:"pid"`
	}
	if json.Unmarshal(out, &st) != nil {
		return "", 0
	}
	return st.Status, st.Pid
}

// Node returns the lab's node called name.
func (s *State) Node(name string) (Node, error) {
	var names []string
	for _, n := range s.Nodes {
		if n.Name == name {
			return n, nil
		}
		names = append(names, n.Name)
	}
	return Node{}, fmt.Errorf("no node %q in lab %s: it has %s", name, s.Name, strings.Join(names, ", "))
}

// Stop is a power cut: the node's link goes away and its container is
// killed and deleted.
func (s *State) Stop(n Node) error {
	if n.Provisioner == ProvisionerQEMU {
		return s.stopVM(n)
	}
	if err := s.unplug(n); err != nil {
		return err
	}
	st, pid := s.containerState(n)
	if st == "" {
		return nil
	}
	// delete --force kills the agent; every process of the node's PID namespace dies with it.
	if err := run(s.Runc, "--root", s.runcRoot(), "delete", "--force", n.Container); err != nil {
		return err
	}
	if pid > 0 && !waitExited(pid, 30*time.Second) {
		return fmt.Errorf("container %s: its init (pid %d) still runs after SIGKILL", n.Container, pid)
	}
	return nil
}

// waitExited waits until pid has exited (gone, or a zombie its parent has
// not reaped yet).
func waitExited(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if !Running(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Running reports whether pid is a live process (not gone, not a zombie).
func Running(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses, which may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	return i < 0 || i+2 >= len(data) || data[i+2] != 'Z'
}

// Down removes the lab: containers, cgroups, namespaces, veths, bridge,
// the system image mount and (unless keep) the lab directory.
func Down(dir string, keep bool, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s, err := Load(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range s.Nodes {
		if err := s.Stop(n); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
		}
	}
	if err := removeCgroups(s.CgroupParent); err != nil {
		errs = append(errs, err)
	}
	for _, n := range s.Nodes {
		if linkExists(n.HostVeth) {
			errs = appendErr(errs, run("ip", "link", "del", n.HostVeth))
		}
		if _, err := os.Stat(filepath.Join("/run/netns", n.Netns)); n.Netns != "" && err == nil {
			errs = appendErr(errs, run("ip", "netns", "del", n.Netns))
		}
	}
	if linkExists(s.Bridge) {
		errs = appendErr(errs, run("ip", "link", "del", s.Bridge))
	}
	if s.SystemMount != "" && isMountPoint(s.SystemMount) {
		errs = appendErr(errs, unix.Unmount(s.SystemMount, 0))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab %s not fully removed (run down again): %w", s.Name, err)
	}
	if !keep {
		if err := os.RemoveAll(s.Dir); err != nil {
			return err
		}
		log.Info("lab removed", "name", s.Name, "dir", s.Dir)
	} else {
		_ = os.Remove(filepath.Join(s.Dir, StateFile))
		log.Info("lab removed, its directory kept", "name", s.Name, "dir", s.Dir)
	}
	return nil
}

// removeCgroups removes the lab's cgroup (and whatever the nodes left
// below it) from every hierarchy, deepest first.
func removeCgroups(parent string) error {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	var errs []error
	for _, root := range roots {
		top := filepath.Join(root, parent)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// hardNoFile is this process's hard open-files limit, the most a node
// can get without CAP_SYS_RESOURCE.
func hardNoFile() uint64 {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	return l.Max
}

// ownCapabilities are the capabilities this process may hand on (its
// bounding set); nil if unknown.
func ownCapabilities() []string {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil
			}
			return BoundingCapabilities(mask)
		}
	}
	return nil
}

// subnetFree refuses a lab subnet that a route or address of this network
// namespace already covers (another lab, a real network): the lab's bridge
// would take traffic meant for it.
func subnetFree(subnet string) error {
	lab, err := netip.ParsePrefix(subnet)
	if err != nil {
		return fmt.Errorf("--subnet %q: %w", subnet, err)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || (r.Type != unix.RTN_UNICAST && r.Type != unix.RTN_LOCAL) {
			continue // the default route, broadcast entries
		}
		ones, _ := r.Dst.Mask.Size()
		dst, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok || ones == 0 {
			continue
		}
		if p := netip.PrefixFrom(dst, ones); p.Overlaps(lab) {
			dev := ""
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				dev = " dev " + l.Attrs().Name
			}
			return fmt.Errorf("--subnet %s overlaps the route to %s%s (table %d): choose another subnet with --subnet", lab, p, dev, r.Table)
		}
	}
	return nil
}

// linkExists asks the kernel (netlink, this network namespace); /sys/class/net
// shows the namespace sysfs was mounted in, which need not be this one.
func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func isMountPoint(dir string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// tail is the last n lines of a file.
func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func appendErr(errs []error, err error) []error {
	if err != nil {
		return append(errs, err)
	}
	return errs
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NodeProcess is the node's state ("running", "stopped", "") and the pid of
// its init (container) or QEMU (VM) while it runs.
func (s *State) NodeProcess(n Node) (string, int) { return s.containerState(n) }
