package qemutests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/agent"
	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

func labConfig(addr, gw, dns string) string {
	return fmt.Sprintf(`apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - name: eth0
      addresses: [%s]
      routes:
        - {to: default, via: %s}
  dns:
    servers: [%s]
    search: [lab.test]
cluster: {name: lab, domain: example}
`, addr, gw, dns)
}

// apiClient talks HTTP to the agent over the VM's virtio-serial API port.
func apiClient(sock string) *http.Client {
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

func applyVia(t *testing.T, c *http.Client, doc string) (int, api.ApplyResponse) {
	t.Helper()
	resp, err := c.Post("http://node/v1/apply", "application/yaml", strings.NewReader(doc))
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body) // all of it: the serial stream must be left empty
	if err != nil {
		t.Fatalf("apply response: %v", err)
	}
	var ar api.ApplyResponse
	if err := json.Unmarshal(body, &ar); err != nil {
		t.Fatalf("apply response %q: %v", body, err)
	}
	return resp.StatusCode, ar
}

func bootWithDisk(t *testing.T, lab *Lab, disk, apiSock string, cmdline ...string) *VM {
	t.Helper()
	return bootLabVM(t, lab, "worker", "52:54:00:00:00:21", []string{
		"-drive", "file=" + disk + ",format=raw,if=virtio",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=api,path=" + apiSock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=api,name=" + api.VirtioPortName,
	}, append([]string{agent.ConsoleAccessParam + "=rw"}, cmdline...)...)
}

// TestTransactionDemo is the demo from the field on a real boot with the
// config slots on a GPT disk: an address change commits; a DNS server that
// cannot exist is reverted by itself within the deadline and the status
// names the probe; a gateway outside the subnet is refused before anything
// is touched; and a power cut during a transaction's probes boots the last
// good config from the same disk.
func TestTransactionDemo(t *testing.T) {
	lab := newLab(t)
	first := labConfig("192.0.2.10/24", "192.0.2.1", "192.0.2.1")
	must(t, lab.Serve(8080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, first) })))
	sum := sha256.Sum256([]byte(first))
	tmp := t.TempDir()
	disk := filepath.Join(tmp, "disk.img")
	must(t, slot.CreateImage(disk, 16<<20))
	sock := filepath.Join(tmp, "api.sock")

	vm := bootWithDisk(t, lab, disk, sock, "ballast.config=http://192.0.2.1:8080/node.yaml", "ballast.config.sha256="+hex.EncodeToString(sum[:]))
	ctx, cancel := context.WithTimeout(context.Background(), 4*bootTimeout)
	defer cancel()
	_, _, err := vm.Expect(ctx, regexp.MustCompile(`msg="config slots on disk" disk=/dev/vda`), 0)
	must(t, err)
	_, _, err = vm.Expect(ctx, regexp.MustCompile(`msg="local dns" listen=127.0.0.53:53,169.254.20.10:53 zone=lab.example`), 0)
	must(t, err)
	m, _, err := vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	if m[5] != "192.0.2.10/24" {
		t.Fatalf("first boot addrs=%q, want 192.0.2.10/24 committed from the URL", m[5])
	}
	c := apiClient(sock)

	code, ar := applyVia(t, c, labConfig("192.0.2.11/24", "192.0.2.1", "192.0.2.1"))
	if code != http.StatusOK || ar.Record.State != txn.Available {
		t.Fatalf("address change: HTTP %d %+v", code, ar)
	}
	must(t, lab.Ping(ctx, "192.0.2.11"))

	// The nodeIP follows: the old address is gone, the explanation says why.
	resp, err := c.Get("http://node/v1/nodeip")
	must(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	must(t, err)
	var nr api.NodeIPResponse
	if err := json.Unmarshal(body, &nr); err != nil {
		t.Fatalf("nodeip %q: %v", body, err)
	}
	if nr.KubeletArg != "192.0.2.11" || !strings.Contains(nr.Explanation, "192.0.2.11") || !strings.Contains(nr.Explanation, "chosen") || !nr.Decision.Changed {
		t.Errorf("nodeip after the address change: %q changed=%v reason=%q\n%s", nr.KubeletArg, nr.Decision.Changed, nr.Decision.Reason, nr.Explanation)
	}

	code, ar = applyVia(t, c, labConfig("192.0.2.11/24", "192.0.2.1", "192.0.2.99"))
	rec := ar.Record
	if code != http.StatusConflict || rec.State != txn.Degraded || rec.Reason != txn.ReasonFailedToConfigure || rec.FailedProbe != "dns 192.0.2.99" {
		t.Errorf("impossible DNS server: HTTP %d %+v", code, ar)
	}
	if took := rec.Finished.Sub(rec.Started); took > 10*time.Second {
		t.Errorf("reverting the bad DNS server took %s, more than the 10s deadline", took)
	}
	must(t, lab.Ping(ctx, "192.0.2.11"))

	code, ar = applyVia(t, c, labConfig("192.0.2.11/24", "198.51.100.1", "192.0.2.1"))
	if code != http.StatusUnprocessableEntity || ar.Record.Reason != txn.ReasonInvalid || !strings.Contains(ar.Error, "gateway 198.51.100.1 is not inside any subnet") {
		t.Errorf("off-subnet gateway: HTTP %d %+v", code, ar)
	}

	resp, err = c.Get("http://node/v1/status")
	must(t, err)
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	must(t, err)
	var st api.Status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("status %q: %v", body, err)
	}
	var states []string
	for _, r := range st.Transactions {
		if r.Origin != "dhcp" { // the boot-time DHCP lease is judged too
			states = append(states, r.State+"/"+r.Reason)
		}
	}
	if want := "Available/ Available/ Degraded/FailedToConfigure Degraded/InvalidConfig"; strings.Join(states, " ") != want {
		t.Errorf("status transactions %v, want %s", states, want)
	}

	var next int
	// Power cut mid-transaction: start a change whose DNS probe waits for
	// an answer that never comes, and kill QEMU while it probes.
	next = vm.Lines()
	go c.Post("http://node/v1/apply", "application/yaml", strings.NewReader(labConfig("192.0.2.12/24", "192.0.2.1", "192.0.2.98")))
	_, _, err = vm.Expect(ctx, regexp.MustCompile(`msg="network applied" part=network source="config slot [AB]" changes=[1-9]`), next)
	must(t, err)
	time.Sleep(500 * time.Millisecond) // inside the probe phase (the DNS probe waits up to 3s)
	vm.Kill()

	vm2 := bootWithDisk(t, lab, disk, filepath.Join(tmp, "api2.sock"))
	m, _, err = vm2.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	if m[5] != "192.0.2.11/24" {
		t.Errorf("after the power cut the node came up with addrs=%q, want the last good 192.0.2.11/24", m[5])
	}
	must(t, lab.Ping(ctx, "192.0.2.11"))
}

// TestDHCPChangeIsATransaction: the DHCP server starts handing out a
// gateway nobody answers for; at the next renewal the node applies the new
// lease, its gateway probe fails, the previous lease's gateway is put back,
// and the status records a degraded "dhcp" transaction.
func TestDHCPChangeIsATransaction(t *testing.T) {
	lab, err := NewLab("192.0.2.1", 24)
	must(t, err)
	t.Cleanup(lab.Close)
	renewSoon := []string{"--dhcp-option=option:domain-name,lab.test", "--dhcp-option=option:dns-server,192.0.2.1", "--dhcp-option=option:T1,8"}
	must(t, lab.DHCP("192.0.2.100", "192.0.2.150", renewSoon...))
	tmp := t.TempDir()
	sock := filepath.Join(tmp, "api.sock")
	disk := filepath.Join(tmp, "disk.img")
	must(t, slot.CreateImage(disk, 16<<20))
	vm := bootWithDisk(t, lab, disk, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 3*bootTimeout)
	defer cancel()
	m, _, err := vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	addr := strings.Split(m[5], "/")[0]

	next := vm.Lines()
	lab.StopDHCP()
	// The same server, now announcing a router that does not exist.
	must(t, lab.DHCP("192.0.2.100", "192.0.2.150", append(renewSoon, "--dhcp-option=option:router,192.0.2.254")...))
	_, _, err = vm.Expect(ctx, regexp.MustCompile(`msg="dhcp change failed its probes, keeping the previous lease"`), next)
	must(t, err)
	must(t, lab.Ping(ctx, addr))

	resp, err := apiClient(sock).Get("http://node/v1/status")
	must(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	must(t, err)
	var st api.Status
	must(t, json.Unmarshal(body, &st))
	found := false
	for _, r := range st.Transactions {
		if r.Origin == "dhcp" && r.State == txn.Degraded && strings.Contains(r.Message, "gateway 192.0.2.254 on eth0") {
			found = true
		}
	}
	if !found {
		t.Errorf("no degraded dhcp transaction naming the gateway probe in %s", body)
	}
}
