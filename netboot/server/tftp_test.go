package server

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tftpEnv is a loopback server whose TFTP root holds test files.
func tftpEnv(t *testing.T) (addr *net.UDPAddr, root string, logs *logBuffer) {
	t.Helper()
	root = t.TempDir()
	e := startServer(t, func(c *Config) { c.TFTPAddr, c.IPXEDir = "127.0.0.1:0", root })
	return e.srv.TFTPAddr().(*net.UDPAddr), root, e.logs
}

// tftpGet is a minimal RFC 1350/2347 client: it sends an RRQ with opts,
// ACKs the OACK and every block, and returns the file and the OACK's
// options. dropFirst skips ACKing block 1 once, to make the server resend it.
func tftpGet(t *testing.T, server *net.UDPAddr, file string, opts map[string]string, dropFirst bool) ([]byte, map[string]string, error) {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := binary.BigEndian.AppendUint16(nil, tftpRRQ)
	req = appendOpt(req, file, "octet")
	for k, v := range opts {
		req = appendOpt(req, k, v)
	}
	if _, err := conn.WriteToUDP(req, server); err != nil {
		t.Fatal(err)
	}
	blksize := 512
	if v, ok := opts["blksize"]; ok {
		blksize, _ = strconv.Atoi(v)
	}
	var data bytes.Buffer
	oack := map[string]string{}
	buf := make([]byte, 70000)
	var next uint16 = 1
	var tid *net.UDPAddr
	dropped := false
	for {
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			return nil, nil, err
		}
		if tid == nil {
			tid = from
			if tid.Port == server.Port {
				return nil, nil, fmt.Errorf("server answered from port %d, not from a new transfer ID", tid.Port)
			}
		}
		ack := func(block uint16) {
			conn.WriteToUDP(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, tftpACK), block), tid)
		}
		switch binary.BigEndian.Uint16(buf) {
		case tftpERROR:
			return nil, nil, fmt.Errorf("error %d: %s", binary.BigEndian.Uint16(buf[2:]), strings.TrimRight(string(buf[4:n]), "\x00"))
		case tftpOACK:
			f := bytes.Split(buf[2:n], []byte{0})
			for i := 0; i+1 < len(f); i += 2 {
				oack[string(f[i])] = string(f[i+1])
			}
			if v, ok := oack["blksize"]; ok {
				blksize, _ = strconv.Atoi(v)
			}
			ack(0)
		case tftpDATA:
			block := binary.BigEndian.Uint16(buf[2:])
			if block == next {
				if dropFirst && block == 1 && !dropped {
					dropped = true // no ACK: the server must time out and resend
					continue
				}
				data.Write(buf[4:n])
				next++
			}
			ack(block)
			if block == next-1 && n-4 < blksize {
				return data.Bytes(), oack, nil
			}
		}
	}
}

func TestTFTP(t *testing.T) {
	addr, root, logs := tftpEnv(t)
	small := []byte("undionly\n")
	big := make([]byte, 3*1468+100)
	rand.Read(big)
	exact := make([]byte, 4*512) // a multiple of the block size ends with an empty block
	rand.Read(exact)
	write(t, filepath.Join(root, "undionly.kpxe"), string(small))
	write(t, filepath.Join(root, "ipxe.efi"), string(big))
	write(t, filepath.Join(root, "exact.bin"), string(exact))
	outside := filepath.Join(filepath.Dir(root), "outside.txt")
	write(t, outside, "secret")
	t.Cleanup(func() { os.Remove(outside) })

	cases := []struct {
		name, file string
		opts       map[string]string
		want       []byte
		wantOACK   map[string]string
	}{
		{"plain RFC 1350", "undionly.kpxe", nil, small, map[string]string{}},
		{"blksize and tsize", "ipxe.efi", map[string]string{"blksize": "1468", "tsize": "0"}, big,
			map[string]string{"blksize": "1468", "tsize": strconv.Itoa(len(big))}},
		{"option names are case-insensitive", "/ipxe.efi", map[string]string{"BLKSIZE": "8", "timeout": "2"}, big,
			map[string]string{"blksize": "8", "timeout": "2"}},
		{"exact multiple of blksize", "exact.bin", nil, exact, map[string]string{}},
		{"huge blksize is capped", "ipxe.efi", map[string]string{"blksize": "70000"}, big, map[string]string{"blksize": "65464"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, oack, err := tftpGet(t, addr, c.file, c.opts, false)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.want) {
				t.Errorf("got %d bytes, want %d", len(got), len(c.want))
			}
			if fmt.Sprint(oack) != fmt.Sprint(c.wantOACK) {
				t.Errorf("OACK %v, want %v", oack, c.wantOACK)
			}
		})
	}

	t.Run("lost ACK is retransmitted", func(t *testing.T) {
		got, _, err := tftpGet(t, addr, "ipxe.efi", map[string]string{"timeout": "1"}, true)
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("got %d bytes, err %v; want the file after a resend", len(got), err)
		}
	})

	for _, name := range []string{"../outside.txt", "/../outside.txt", `..\outside.txt`, "sub/../../outside.txt"} {
		t.Run("refuses "+name, func(t *testing.T) {
			_, _, err := tftpGet(t, addr, name, nil, false)
			if err == nil || !strings.Contains(err.Error(), "error 2") {
				t.Errorf("RRQ %q: %v, want error 2 (access violation)", name, err)
			}
		})
	}
	t.Run("not found", func(t *testing.T) {
		if _, _, err := tftpGet(t, addr, "nope.efi", nil, false); err == nil || !strings.Contains(err.Error(), "error 1") {
			t.Errorf("missing file: %v, want error 1", err)
		}
	})
	t.Run("write refused", func(t *testing.T) {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.WriteToUDP(appendOpt(binary.BigEndian.AppendUint16(nil, tftpWRQ), "new.bin", "octet"), addr)
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 600)
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatal(err)
		}
		if n < 4 || binary.BigEndian.Uint16(buf) != tftpERROR || binary.BigEndian.Uint16(buf[2:]) != tftpErrAccess {
			t.Errorf("WRQ answered with %x, want ERROR 2", buf[:n])
		}
		if _, err := os.Stat(filepath.Join(root, "new.bin")); err == nil {
			t.Error("WRQ created a file")
		}
	})

	t.Run("busybox tftp", func(t *testing.T) {
		bb, err := exec.LookPath("busybox")
		if err != nil {
			t.Skip("busybox not found: apt-get install -y busybox-static")
		}
		out := filepath.Join(t.TempDir(), "out")
		cmd := exec.Command(bb, "tftp", "-b", "1468", "-g", "-r", "ipxe.efi", "-l", out, "127.0.0.1", strconv.Itoa(addr.Port))
		if b, err := cmd.CombinedOutput(); err != nil {
			if strings.Contains(string(b), "applet not found") {
				t.Skip("this busybox has no tftp applet")
			}
			t.Fatalf("busybox tftp: %v: %s", err, b)
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, big) {
			t.Errorf("busybox got %d bytes, want %d", len(got), len(big))
		}
	})

	if !strings.Contains(logs.String(), `msg="tftp transfer done" mac="" ip=127.0.0.1 file=ipxe.efi`) {
		t.Error("transfers not logged")
	}
}

// tftpClient is a socket bound to src that sends one request to server.
func tftpClient(t *testing.T, src string, server *net.UDPAddr, file string, opts ...string) *net.UDPConn {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := appendOpt(binary.BigEndian.AppendUint16(nil, tftpRRQ), file, "octet")
	for i := 0; i+1 < len(opts); i += 2 {
		req = appendOpt(req, opts[i], opts[i+1])
	}
	if _, err := conn.WriteToUDP(req, server); err != nil {
		t.Fatal(err)
	}
	return conn
}

// queued returns the packets waiting on conn, without waiting for more:
// on loopback a packet is queued by the time its sender's write returns.
func queued(t *testing.T, conn *net.UDPConn) (pkts [][]byte, from []*net.UDPAddr) {
	t.Helper()
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for {
		buf := make([]byte, 70000)
		var n int
		var sa unix.Sockaddr
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, sa, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if rerr == unix.EAGAIN {
			return pkts, from
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		pkts = append(pkts, buf[:n])
		if in4, ok := sa.(*unix.SockaddrInet4); ok {
			from = append(from, &net.UDPAddr{IP: net.IP(in4.Addr[:]), Port: in4.Port})
		}
	}
}

// firstReply waits for the server's first answer to conn's request.
func firstReply(t *testing.T, conn *net.UDPConn) ([]byte, *net.UDPAddr) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 70000)
	n, from, err := conn.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("no answer from the server: %v", err)
	}
	return buf[:n], from
}

func oackOptions(t *testing.T, p []byte) map[string]string {
	t.Helper()
	if len(p) < 2 || binary.BigEndian.Uint16(p) != tftpOACK {
		t.Fatalf("answer %x, want an OACK", p)
	}
	opts := map[string]string{}
	f := bytes.Split(p[2:], []byte{0})
	for i := 0; i+1 < len(f); i += 2 {
		opts[string(f[i])] = string(f[i+1])
	}
	return opts
}

// abort ends a transfer from the client's side with an ERROR packet.
func abort(conn *net.UDPConn, tid *net.UDPAddr) {
	conn.WriteToUDP(tftpErrorPacket(tftpErrUndefined, "test done"), tid)
}

// TestTFTPSendsLittleBeforeTheFirstACK: a request from a spoofed address
// draws at most two copies of the first block, or three OACKs and no DATA.
// The server's timeout unit is 20 ms here, so the transfers give up fast.
func TestTFTPSendsLittleBeforeTheFirstACK(t *testing.T) {
	root := t.TempDir()
	e := startServer(t, func(c *Config) { c.TFTPAddr, c.IPXEDir, c.tftpUnit = "127.0.0.1:0", root, 20*time.Millisecond })
	addr := e.srv.TFTPAddr().(*net.UDPAddr)
	big := make([]byte, 4096)
	rand.Read(big)
	write(t, filepath.Join(root, "plain.bin"), string(big))
	write(t, filepath.Join(root, "opts.bin"), string(big))

	t.Run("without options: the first block twice at most", func(t *testing.T) {
		conn := tftpClient(t, "127.0.0.1", addr, "plain.bin")
		waitLog(t, e.logs, regexp.MustCompile(`msg="tftp transfer failed" mac="" ip=127.0.0.1 file=plain.bin block=1 err="no ACK for block 1 after \d+ tries"`))
		pkts, _ := queued(t, conn)
		if len(pkts) != 2 {
			t.Errorf("%d packets to a client that never ACKed, want 2 (the first block and one retransmission)", len(pkts))
		}
		for _, p := range pkts {
			if binary.BigEndian.Uint16(p) != tftpDATA || binary.BigEndian.Uint16(p[2:]) != 1 || len(p) != 516 {
				t.Errorf("packet %x..., want DATA block 1", p[:4])
			}
		}
	})
	t.Run("with options: the OACK three times at most, no DATA", func(t *testing.T) {
		conn := tftpClient(t, "127.0.0.1", addr, "opts.bin", "blksize", "1468", "tsize", "0")
		waitLog(t, e.logs, regexp.MustCompile(`msg="tftp transfer failed" mac="" ip=127.0.0.1 file=opts.bin stage=oack err="no ACK for block 0 after \d+ tries"`))
		pkts, _ := queued(t, conn)
		if len(pkts) != 3 {
			t.Errorf("%d packets to a client that never ACKed the OACK, want 3", len(pkts))
		}
		for _, p := range pkts {
			if binary.BigEndian.Uint16(p) != tftpOACK || len(p) > 64 {
				t.Errorf("packet of %d bytes, opcode %d: want only small OACKs before ACK 0", len(p), binary.BigEndian.Uint16(p))
			}
		}
	})
}

// TestTFTPTimeoutOptionCapped: a client cannot make the server keep a
// transfer (and resend to it) for 255 s per packet.
func TestTFTPTimeoutOptionCapped(t *testing.T) {
	addr, root, _ := tftpEnv(t)
	write(t, filepath.Join(root, "ipxe.efi"), "x")
	for _, c := range []struct{ asked, want string }{{"255", ""}, {"6", ""}, {"5", "5"}, {"1", "1"}} {
		conn := tftpClient(t, "127.0.0.1", addr, "ipxe.efi", "timeout", c.asked, "tsize", "0")
		p, tid := firstReply(t, conn)
		opts := oackOptions(t, p)
		if opts["timeout"] != c.want || opts["tsize"] != "1" {
			t.Errorf("timeout %s asked: OACK %v, want timeout %q (tsize 1)", c.asked, opts, c.want)
		}
		abort(conn, tid)
	}
}

// TestTFTPConcurrencyCapped: transfers beyond the per-source and the
// global cap are dropped unanswered, and logged; a finished transfer
// frees its slot. The timeout unit is an hour, so transfers waiting for
// an ACK hold their slots until the client aborts them.
func TestTFTPConcurrencyCapped(t *testing.T) {
	root := t.TempDir()
	start := func(t *testing.T, max, perSource int) (*testEnv, *net.UDPAddr) {
		e := startServer(t, func(c *Config) {
			c.TFTPAddr, c.IPXEDir, c.tftpUnit = "127.0.0.1:0", root, time.Hour
			c.TFTPMaxTransfers, c.TFTPMaxPerSource = max, perSource
		})
		return e, e.srv.TFTPAddr().(*net.UDPAddr)
	}
	write(t, filepath.Join(root, "ipxe.efi"), "x")
	// hold starts a transfer and returns once the server has answered it.
	hold := func(t *testing.T, src string, addr *net.UDPAddr) (*net.UDPConn, *net.UDPAddr) {
		conn := tftpClient(t, src, addr, "ipxe.efi", "tsize", "0")
		p, tid := firstReply(t, conn)
		oackOptions(t, p)
		return conn, tid
	}

	t.Run("per source", func(t *testing.T) {
		e, addr := start(t, 10, 2)
		c1, tid1 := hold(t, "127.0.0.1", addr)
		hold(t, "127.0.0.1", addr)
		over := tftpClient(t, "127.0.0.1", addr, "ipxe.efi", "tsize", "0")
		waitLog(t, e.logs, regexp.MustCompile(`level=WARN msg="tftp request dropped" mac="" ip=127.0.0.1 file=ipxe.efi reason="2 transfers running for 127.0.0.1, the most allowed from one address \(--tftp-max-per-source\)" dropped=1`))
		if pkts, _ := queued(t, over); len(pkts) != 0 {
			t.Errorf("a request over the per-source cap was answered: %x", pkts[0])
		}
		hold(t, "127.0.0.2", addr) // other sources are served
		abort(c1, tid1)
		waitLog(t, e.logs, regexp.MustCompile(`msg="tftp transfer failed" .*err="client sent error 0: \\"test done\\""`))
		hold(t, "127.0.0.1", addr) // the slot is free again
	})
	t.Run("overall", func(t *testing.T) {
		e, addr := start(t, 2, 2)
		hold(t, "127.0.0.1", addr)
		hold(t, "127.0.0.2", addr)
		over := tftpClient(t, "127.0.0.3", addr, "ipxe.efi", "tsize", "0")
		waitLog(t, e.logs, regexp.MustCompile(`level=WARN msg="tftp request dropped" mac="" ip=127.0.0.3 file=ipxe.efi reason="2 transfers running, the most allowed \(--tftp-max-transfers\)"`))
		if pkts, _ := queued(t, over); len(pkts) != 0 {
			t.Errorf("a request over the overall cap was answered: %x", pkts[0])
		}
	})
}
