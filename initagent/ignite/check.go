package ignite

import (
	"fmt"
	"net/url"
	"path"
	"strings"

	igntypes "github.com/coreos/ignition/v2/config/v3_5/types"
)

// Problem is one thing in an Ignition config the node would refuse: the
// field path (e.g. ignition.storage.files[1].path) and what to do.
type Problem struct {
	Field, Msg string
}

func (p Problem) Error() string { return p.Field + ": " + p.Msg }

// Writable are the directories first-boot files may go to; everything else
// belongs to the read-only system image.
var writable = []string{"/etc", "/var", "/root", "/home", "/opt", "/srv"}

// Persistent is the tree that survives a reboot on an installed node (STATE);
// the rest of the writable trees live on the initramfs root, rebuilt every boot.
const persistent = "/var"

// Kubernetes's configuration directory is a link the runtime makes to STATE
// (runtime.kubernetesState); Ignition entries under it are written there.
const (
	kubernetesDir   = "/etc/kubernetes"
	kubernetesState = "/var/lib/ballast/kubernetes"
)

// managed are the paths ballast writes itself: an Ignition entry there would
// be overwritten, or would stop the agent or Kubernetes from starting.
var managed = []struct {
	path    string
	subtree bool
	why     string
}{
	{"/etc/ballast", true, "belongs to the system image"},
	{"/var/lib/ballast", true, "holds the agent's state (config slots history, leases, machine-id, Kubernetes state)"},
	{kubernetesDir, false, "is the runtime's link to " + kubernetesState + " on STATE: put files under it, not the directory itself"},
	{kubernetesDir + "/pki", true, "is made by kubeadm: give the cluster CA in cluster.ca"},
	{kubernetesDir + "/admin.conf", false, "is made by kubeadm"},
	{kubernetesDir + "/super-admin.conf", false, "is made by kubeadm"},
	{kubernetesDir + "/kubelet.conf", false, "is made by kubeadm"},
	{kubernetesDir + "/controller-manager.conf", false, "is made by kubeadm"},
	{kubernetesDir + "/scheduler.conf", false, "is made by kubeadm"},
	{kubernetesDir + "/ballast-kubeadm.yaml", false, "is the runtime's kubeadm configuration"},
	{kubernetesDir + "/ballast-bootstrapped", false, "is the runtime's bootstrap record"},
	{kubernetesDir + "/manifests/etcd.yaml", false, "is the control plane's static pod, made by kubeadm"},
	{kubernetesDir + "/manifests/kube-apiserver.yaml", false, "is the control plane's static pod, made by kubeadm"},
	{kubernetesDir + "/manifests/kube-controller-manager.yaml", false, "is the control plane's static pod, made by kubeadm"},
	{kubernetesDir + "/manifests/kube-scheduler.yaml", false, "is the control plane's static pod, made by kubeadm"},
	{kubernetesDir + "/manifests-held", true, "holds the controller manager's and scheduler's static pods until the local apiserver is ready"},
	{"/etc/resolv.conf", false, "is written by the agent: it points at the node's local DNS server; set upstream servers in network.dns"},
	{"/etc/hosts", false, "is written by the runtime with localhost and the node's names; give other names through DNS"},
	{"/etc/machine-id", false, "is kept by the runtime on STATE (/var/lib/ballast/machine-id)"},
	{"/etc/passwd", false, "is written from ignition.passwd: declare users in passwd.users"},
	{"/etc/group", false, "is written from ignition.passwd: declare groups in passwd.groups"},
	{"/etc/shadow", false, "is written from ignition.passwd: set passwordHash in passwd.users"},
	{"/etc/containerd/config.toml", false, "is written by the runtime each time containerd starts"},
	{"/etc/cni/net.d/10-ballast.conflist", false, "is the runtime's pod network configuration"},
	{"/var/lib/kubelet/kubeconfig", false, "is written by the runtime"},
	{"/var/lib/kubelet/config.yaml", false, "is written by the runtime"},
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// place checks an absolute path of an Ignition entry and returns where it is
// written (entries under /etc/kubernetes go to STATE) and whether that is on
// STATE (applied once) or on the root rebuilt every boot.
func place(p string) (dest string, onState bool, msg string) {
	if !path.IsAbs(p) {
		return "", false, fmt.Sprintf("%q must be absolute", p)
	}
	clean := path.Clean(p)
	ok := false
	for _, w := range writable {
		if under(clean, w) {
			ok = true
		}
	}
	if !ok {
		return "", false, fmt.Sprintf("%s is on the read-only system image: write under %s", clean, strings.Join(writable, ", "))
	}
	for _, m := range managed {
		if clean == m.path || m.subtree && under(clean, m.path) {
			return "", false, fmt.Sprintf("%s is managed by ballast: it %s; remove this entry", clean, m.why)
		}
	}
	if under(clean, kubernetesDir) {
		clean = kubernetesState + strings.TrimPrefix(clean, kubernetesDir)
	}
	return clean, under(clean, persistent), ""
}

var schemes = map[string]bool{"data": true, "http": true, "https": true}

func checkSource(field string, r igntypes.Resource, add func(string, string, ...any)) {
	if r.Source == nil {
		return
	}
	u, err := url.Parse(*r.Source)
	if err != nil {
		add(field+".source", "%v", err)
	} else if !schemes[u.Scheme] {
		add(field+".source", "scheme %q is not fetched by ballast: use data:, http: or https:", u.Scheme)
	}
	if r.Verification.Hash != nil {
		algo, _, _ := strings.Cut(*r.Verification.Hash, "-")
		if algo != "sha512" && algo != "sha256" {
			add(field+".verification.hash", "%q: write sha512-<hex> or sha256-<hex>", *r.Verification.Hash)
		}
	}
}

// Check lists what the node would refuse in ign, field paths starting with
// prefix (normally "ignition"). The machine config validator calls it, so
// imgbuild, nodectl and netbootd refuse what the node would; Apply and Boot
// call it again on the config after merge/replace.
func Check(prefix string, ign *igntypes.Config) []Problem {
	var ps []Problem
	add := func(field, format string, args ...any) {
		ps = append(ps, Problem{Field: prefix + "." + field, Msg: fmt.Sprintf(format, args...)})
	}
	s := ign.Storage
	for _, k := range []struct {
		name string
		n    int
	}{{"disks", len(s.Disks)}, {"filesystems", len(s.Filesystems)}, {"raid", len(s.Raid)}, {"luks", len(s.Luks)}} {
		for i := 0; i < k.n; i++ {
			add(fmt.Sprintf("storage.%s[%d]", k.name, i), "not applied by ballast: the disk layout is imgbuild's and STATE is /var (README \"Disks, ISO, upgrades\"); remove it")
		}
	}
	for i := range ign.Systemd.Units {
		add(fmt.Sprintf("systemd.units[%d]", i), "ballast runs no systemd: the agent's services are configured in the services section; remove it")
	}
	if len(ign.KernelArguments.ShouldExist) > 0 {
		add("kernelArguments.shouldExist", "not applied by ballast: set kernel arguments in the recipe (imgbuild)")
	}
	if len(ign.KernelArguments.ShouldNotExist) > 0 {
		add("kernelArguments.shouldNotExist", "not applied by ballast: set kernel arguments in the recipe (imgbuild)")
	}
	for i, r := range ign.Ignition.Config.Merge {
		checkSource(fmt.Sprintf("ignition.config.merge[%d]", i), r, add)
	}
	checkSource("ignition.config.replace", ign.Ignition.Config.Replace, add)
	for i, r := range ign.Ignition.Security.TLS.CertificateAuthorities {
		checkSource(fmt.Sprintf("ignition.security.tls.certificateAuthorities[%d]", i), r, add)
	}
	entry := func(field, p string) {
		if _, _, msg := place(p); msg != "" {
			add(field, "%s", msg)
		}
	}
	for i, d := range s.Directories {
		f := fmt.Sprintf("storage.directories[%d]", i)
		entry(f+".path", d.Path)
	}
	for i, fl := range s.Files {
		f := fmt.Sprintf("storage.files[%d]", i)
		entry(f+".path", fl.Path)
		checkSource(f+".contents", fl.Contents, add)
		for j, a := range fl.Append {
			checkSource(fmt.Sprintf("%s.append[%d]", f, j), a, add)
		}
	}
	for i, l := range s.Links {
		f := fmt.Sprintf("storage.links[%d]", i)
		entry(f+".path", l.Path)
		if l.Target == nil || *l.Target == "" {
			add(f+".target", "missing: say what the link points to")
		} else if isTrue(l.Hard) {
			entry(f+".target", *l.Target)
			_, ls, _ := place(l.Path)
			_, ts, _ := place(*l.Target)
			if ls != ts {
				add(f+".target", "a hard link cannot join STATE (/var) and the rest of the root: use a symbolic link")
			}
		}
	}
	for i, g := range ign.Passwd.Groups {
		f := fmt.Sprintf("passwd.groups[%d]", i)
		if g.ShouldExist != nil && !*g.ShouldExist {
			add(f+".shouldExist", "removing groups is not supported: the root is rebuilt every boot, so leave the group out")
		}
		if !validName(g.Name) {
			add(f+".name", "%q is not a group name", g.Name)
		}
	}
	for i, u := range ign.Passwd.Users {
		f := fmt.Sprintf("passwd.users[%d]", i)
		if !validName(u.Name) {
			add(f+".name", "%q is not a user name", u.Name)
		}
		if u.ShouldExist != nil && !*u.ShouldExist {
			add(f+".shouldExist", "removing users is not supported: the root is rebuilt every boot, so leave the user out")
		}
		if u.HomeDir != nil {
			entry(f+".homeDir", *u.HomeDir)
		}
	}
	return ps
}

func validName(n string) bool { return n != "" && !strings.ContainsAny(n, ":\n/,") }
