package vip

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const keepalivedBin = "/usr/sbin/keepalived"

// keepalived is a keepalived VRRP process in a node's namespace.
type keepalived struct {
	nd   *node
	conf string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// keepalivedConf is a VRRPv3 instance speaking unicast to the peers.
func keepalivedConf(name string, vrid, prio uint8, interval time.Duration, src netip.Addr, peers []netip.Addr, vip netip.Prefix) string {
	var ps []string
	for _, p := range peers {
		ps = append(ps, p.String())
	}
	return fmt.Sprintf(`global_defs {
	router_id %s
	vrrp_version 3
	script_user root
	enable_script_security
}
vrrp_instance api {
	state BACKUP
	interface eth0
	virtual_router_id %d
	priority %d
	advert_int %g
	unicast_src_ip %s
	unicast_peer {
		%s
	}
	virtual_ipaddress {
		%s dev eth0
	}
}
`, name, vrid, prio, interval.Seconds(), src, strings.Join(ps, "\n\t\t"), vip)
}

func startKeepalived(t *testing.T, nd *node, conf string) *keepalived {
	t.Helper()
	dir := filepath.Join(nd.l.dir, fmt.Sprintf("keepalived%d-%d", nd.i, time.Now().UnixNano()))
	os.MkdirAll(dir, 0o755)
	k := &keepalived{nd: nd, conf: filepath.Join(dir, "keepalived.conf"), log: filepath.Join(dir, "log"), done: make(chan struct{})}
	if err := os.WriteFile(k.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(k.log)
	if err != nil {
		t.Fatal(err)
	}
	// -n: foreground, -l: log to the console, -D: detailed log, -P: VRRP only.
	k.cmd = exec.Command("ip", "netns", "exec", nd.ns, keepalivedBin, "-n", "-l", "-D", "-P", "-f", k.conf,
		"-p", filepath.Join(dir, "keepalived.pid"), "-r", filepath.Join(dir, "vrrp.pid"), "-c", filepath.Join(dir, "checkers.pid"))
	k.cmd.Stdout, k.cmd.Stderr = logf, logf
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		k.cmd.Wait()
		logf.Close()
		close(k.done)
	}()
	t.Cleanup(func() {
		k.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(k.log)
			t.Logf("keepalived on node%d:\n%s", nd.i, b)
		}
	})
	return k
}

// stop stops keepalived with SIGTERM (it sends priority 0) and waits.
func (k *keepalived) stop(t *testing.T) {
	select {
	case <-k.done:
		return
	default:
	}
	k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.done:
	case <-time.After(waitLong):
		k.cmd.Process.Kill()
		<-k.done
		t.Errorf("keepalived on node%d ignored SIGTERM", k.nd.i)
	}
}

// TestKeepalivedInterop: a ballast speaker and keepalived (vrrp_version 3,
// unicast) elect the right master in both priority orders and hand the
// VIP back and forth: a stopped master's VIP moves to the other, and the
// restarted higher-priority one takes it back (preempt).
func TestKeepalivedInterop(t *testing.T) {
	if _, err := os.Stat(keepalivedBin); err != nil {
		t.Skipf("needs %s (apt-get install keepalived; CI installs it with tools/deps.sh)", keepalivedBin)
	}
	const vrid = 51
	const interval = testInterval
	for _, ballastHigher := range []bool{true, false} {
		t.Run(fmt.Sprintf("ballastHigher=%v", ballastHigher), func(t *testing.T) {
			l := newLAN(t, 2)
			b, k := l.nodes[0], l.nodes[1]
			bPrio, kPrio := uint8(100), uint8(150)
			if ballastHigher {
				bPrio, kPrio = 150, 100
			}
			spec := speakerSpec{Routers: []RouterConfig{withVRID(api4(l, 0, 2, bPrio, interval), vrid)}}
			conf := keepalivedConf("node1", vrid, kPrio, interval, k.addr, []netip.Addr{b.addr}, vip4)
			ka := startKeepalived(t, k, conf)
			b.start(t, spec)
			hi, lo := b, k
			if !ballastHigher {
				hi, lo = k, b
			}
			// Elected: the higher one holds the VIP, and ballast heard
			// keepalived's adverts (or keepalived stays silent as backup).
			waitFor(t, fmt.Sprintf("node%d alone to hold the VIP", hi.i), func() bool {
				h := l.holders(t, vip4)
				return len(h) == 1 && h[0] == hi.i
			})
			if ballastHigher {
				b.waitState(t, "api", StateMaster)
			} else {
				waitFor(t, "ballast to follow keepalived", func() bool {
					st := b.router(t, "api")
					return st.State == StateBackup && st.Master == k.addr.String() && st.MasterPriority == kPrio
				})
			}
			// Several master down intervals: neither side takes over.
			s := l.sample(t, vip4)
			time.Sleep(time.Second)
			s.done()
			if s.split > 0 {
				t.Fatalf("both hold the VIP: %v", s.splitDesc)
			}
			if st := b.router(t, "api"); st.Counters.DroppedChecksum+st.Counters.DroppedMalformed+st.Counters.DroppedVersion+st.Counters.DroppedTTL > 0 {
				t.Errorf("ballast dropped keepalived's adverts: %+v", st.Counters)
			}

			// Stop the master: the other takes the VIP.
			if hi == b {
				b.signal(t, syscall.SIGTERM)
			} else {
				ka.stop(t)
			}
			waitFor(t, fmt.Sprintf("node%d to take the VIP", lo.i), func() bool {
				h := l.holders(t, vip4)
				return len(h) == 1 && h[0] == lo.i
			})
			if lo == b {
				st := b.waitState(t, "api", StateMaster)
				if tr, _ := lastTransition(st, StateMaster); tr.Cause != CausePriorityZero {
					t.Errorf("ballast took over because of %q (%s), want keepalived's priority 0", tr.Cause, tr.Reason)
				}
			}

			// Start it again: it preempts and takes the VIP back.
			if hi == b {
				b.start(t, spec)
			} else {
				startKeepalived(t, k, conf)
			}
			waitFor(t, fmt.Sprintf("node%d to take the VIP back", hi.i), func() bool {
				h := l.holders(t, vip4)
				return len(h) == 1 && h[0] == hi.i
			})
			st := b.router(t, "api")
			if hi == b {
				st = b.waitState(t, "api", StateMaster)
				if tr, _ := lastTransition(st, StateMaster); tr.Cause != CausePreempt {
					t.Errorf("ballast took the VIP back because of %q (%s), want preempt", tr.Cause, tr.Reason)
				}
			} else {
				st = b.waitState(t, "api", StateBackup)
				if tr, _ := lastTransition(st, StateBackup); tr.Cause != CauseHigherPrio {
					t.Errorf("ballast gave the VIP back because of %q (%s), want keepalived's higher priority", tr.Cause, tr.Reason)
				}
			}
		})
	}
}
