package qemutests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ballast-os/ballast/initagent/pid1/readiness"
)

// newLab makes a lab with a DHCP server; every scenario gets its own.
func newLab(t *testing.T) *Lab {
	t.Helper()
	lab, err := NewLab("192.0.2.1", 24)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dnsmasq log:\n%s", lab.DHCPLog())
		}
		lab.Close()
	})
	if err := lab.DHCP("192.0.2.100", "192.0.2.150", "--dhcp-option=option:dns-server,192.0.2.1", "--dhcp-option=option:domain-name,lab.test"); err != nil {
		t.Fatal(err)
	}
	return lab
}

func bootOnLab(t *testing.T, lab *Lab, recipe, mac string, cmdline ...string) *VM {
	t.Helper()
	return bootLabVM(t, lab, recipe, mac, nil, cmdline...)
}

// bootLabVM boots the recipe's PXE artifacts with one NIC on the lab (plus
// extra QEMU arguments) and stops QEMU when the test ends, showing the
// console tail if the test failed.
func bootLabVM(t *testing.T, lab *Lab, recipe, mac string, extra []string, cmdline ...string) *VM {
	t.Helper()
	dir := buildRecipe(t, recipe)
	nic, err := lab.Tap(mac)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := loadRecipe(t, recipe)
	vm, err := StartVM(VMOptions{
		Kernel: dir + "/vmlinuz", Initrd: dir + "/initramfs.img", Accel: *accelFlag, Netns: lab.Name,
		Args:    append(nic, extra...),
		Cmdline: append(append([]string{}, r...), cmdline...),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("last %d console lines:\n%s", consoleTail, vm.Tail(consoleTail))
		}
	})
	return vm
}

// TestNetworkDHCPByDefault: without a machine config the node runs DHCPv4
// on its NIC, takes dnsmasq's lease, and answers ping at that address.
func TestNetworkDHCPByDefault(t *testing.T) {
	lab := newLab(t)
	vm := bootOnLab(t, lab, "worker", "52:54:00:00:00:11")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	m, _, err := vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	addr := strings.Split(m[5], "/")[0]
	if !strings.HasPrefix(addr, "192.0.2.1") || !strings.HasSuffix(m[5], "/24") {
		t.Fatalf("readiness addrs=%q, want a /24 lease from 192.0.2.100-150", m[5])
	}
	must(t, lab.Ping(ctx, addr))
	if !strings.Contains(lab.DHCPLog(), "DHCPACK(br0) "+addr+" 52:54:00:00:00:11") {
		t.Errorf("dnsmasq did not log the ACK for %s", addr)
	}
}

const staticConfig = `apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - name: eth0
      addresses: [192.0.2.10/24]
      routes:
        - {to: default, via: 192.0.2.1}
  dns:
    servers: [192.0.2.1]
    search: [lab.test]
ignition:
  ignition: {version: 3.4.0}
  storage:
    files:
      - path: /etc/motd
        contents: {source: "data:,configured%20by%20ballast%0A"}
`

// TestNetworkStaticConfigFromURL: the node fetches its config over HTTP
// (on the DHCP default), verifies its sha256, switches to the static
// address, releases its lease, and answers ping at the configured address.
func TestNetworkStaticConfigFromURL(t *testing.T) {
	lab := newLab(t)
	var fetched atomic.Int32
	must(t, lab.Serve(8080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/node.yaml" {
			http.NotFound(w, r)
			return
		}
		fetched.Add(1)
		fmt.Fprint(w, staticConfig)
	})))
	sum := sha256.Sum256([]byte(staticConfig))
	vm := bootOnLab(t, lab, "worker", "52:54:00:00:00:12",
		"ballast.config=http://192.0.2.1:8080/node.yaml", "ballast.config.sha256="+hex.EncodeToString(sum[:]))
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	_, next, err := vm.Expect(ctx, regexp.MustCompile(`msg="machine config accepted" source=cmdline:http://192.0.2.1:8080/node.yaml sha256=`+hex.EncodeToString(sum[:])), 0)
	must(t, err)
	_, next, err = vm.Expect(ctx, regexp.MustCompile(`msg="ignition applied" mode="first boot" files=1`), 0)
	must(t, err)
	m, _, err := vm.Expect(ctx, readiness.Pattern, next)
	must(t, err)
	if m[5] != "192.0.2.10/24" {
		t.Errorf("readiness addrs=%q, want only 192.0.2.10/24", m[5])
	}
	must(t, lab.Ping(ctx, "192.0.2.10"))
	if fetched.Load() == 0 {
		t.Error("config server was never asked")
	}
	// The DHCP lease that carried the fetch was given back once the config said static.
	_, _, err = vm.Expect(ctx, regexp.MustCompile(`msg="lease released" .*address=192.0.2.1[0-9]+/24`), 0)
	must(t, err)
}

// TestNetworkBadConfigKeepsDHCP: a config that fails validation is
// rejected with its field errors and the node stays on DHCP.
func TestNetworkBadConfigKeepsDHCP(t *testing.T) {
	lab := newLab(t)
	bad := strings.Replace(staticConfig, "via: 192.0.2.1}", "via: 198.51.100.1}", 1)
	must(t, lab.Serve(8080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, bad) })))
	vm := bootOnLab(t, lab, "worker", "52:54:00:00:00:13", "ballast.config=http://192.0.2.1:8080/node.yaml")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	_, _, err := vm.Expect(ctx, regexp.MustCompile(`msg="machine config invalid" .*field=network.interfaces\[0\].routes\[0\].via line=8 problem="gateway 198.51.100.1 is not inside any subnet`), 0)
	must(t, err)
	m, _, err := vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	if !strings.HasPrefix(m[5], "192.0.2.1") || m[5] == "192.0.2.10/24" {
		t.Errorf("readiness addrs=%q, want the DHCP lease", m[5])
	}
}
