package source

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestTFTPPacketEncoding(t *testing.T) {
	for _, tc := range []struct {
		name string
		enc  []byte
		want string
	}{
		{"rrq", encodeRRQ("dir/f", []tftpOption{{"blksize", "1468"}, {"tsize", "0"}}), "\x00\x01dir/f\x00octet\x00blksize\x001468\x00tsize\x000\x00"},
		{"ack", encodeACK(0x1234), "\x00\x04\x12\x34"},
		{"error", encodeError(tftpErrNotFound, "nope"), "\x00\x05\x00\x01nope\x00"},
	} {
		if string(tc.enc) != tc.want {
			t.Errorf("encode %s = %q, want %q", tc.name, tc.enc, tc.want)
		}
	}

	for _, tc := range []struct {
		in   string
		want tftpPacket
	}{
		{"\x00\x01dir/f\x00OCTET\x00blksize\x001468\x00tsize\x000\x00",
			tftpPacket{op: tftpRRQ, file: "dir/f", mode: "octet", opts: map[string]string{"blksize": "1468", "tsize": "0"}}},
		{"\x00\x03\xff\xffabc", tftpPacket{op: tftpDATA, block: 65535, data: []byte("abc")}},
		{"\x00\x03\x00\x01", tftpPacket{op: tftpDATA, block: 1, data: []byte{}}},
		{"\x00\x04\x00\x00", tftpPacket{op: tftpACK, block: 0}},
		{"\x00\x05\x00\x01File not found\x00", tftpPacket{op: tftpERROR, code: 1, msg: "File not found"}},
		{"\x00\x05\x00\x02no NUL", tftpPacket{op: tftpERROR, code: 2, msg: "no NUL"}},
		{"\x00\x06BLKSIZE\x00512\x00tsize\x00204800\x00", tftpPacket{op: tftpOACK, opts: map[string]string{"blksize": "512", "tsize": "204800"}}},
		{"\x00\x06", tftpPacket{op: tftpOACK, opts: map[string]string{}}},
	} {
		got, err := parseTFTP([]byte(tc.in))
		if err != nil {
			t.Errorf("parseTFTP(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseTFTP(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}

	for _, bad := range []string{
		"", "\x00", "\x00\x09", "\x00\x03\x00", "\x00\x04\x00\x01\x00", "\x00\x05\x00",
		"\x00\x06blksize\x00", "\x00\x06blksize\x00512", "\x00\x01file-only\x00",
	} {
		if p, err := parseTFTP([]byte(bad)); err == nil {
			t.Errorf("parseTFTP(%q) = %+v, want an error", bad, p)
		}
	}
}

func FuzzParseTFTP(f *testing.F) {
	f.Add([]byte("\x00\x06blksize\x00512\x00"))
	f.Add([]byte("\x00\x03\x00\x01data"))
	f.Add([]byte("\x00\x05\x00\x01x\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseTFTP(b) // must not panic
	})
}

// udpListen opens a UDP socket on 127.0.0.1 with a free port.
func udpListen(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expect reads one packet on c and checks it is op (and block, for ACK).
func expect(t *testing.T, c *net.UDPConn, op, block uint16) (tftpPacket, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 1500)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Errorf("server: waiting for opcode %d block %d: %v", op, block, err)
		return tftpPacket{}, from
	}
	p, err := parseTFTP(buf[:n])
	if err != nil || p.op != op || (op == tftpACK && p.block != block) {
		t.Errorf("server: got %+v (%v), want opcode %d block %d", p, err, op, block)
	}
	return p, from
}

func data(block uint16, b []byte) []byte {
	return append([]byte{0, tftpDATA, byte(block >> 8), byte(block)}, b...)
}

// A scripted RFC 1350 server (no option support) that loses packets, sends
// duplicates and has a stray peer: the client must retransmit, re-ACK,
// answer the stray with ERROR 5 and still assemble the file.
func TestTFTPLossDuplicatesAndStrays(t *testing.T) {
	listen, xfer, stray := udpListen(t), udpListen(t), udpListen(t)
	file := randomBytes(5*tftpDefBlksize + 100) // blocks 1–5 full, 6 short
	block := func(n uint16) []byte {
		return file[int(n-1)*tftpDefBlksize : min(int(n)*tftpDefBlksize, len(file))]
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		expect(t, listen, tftpRRQ, 0) // lost: never answered
		rrq, client := expect(t, listen, tftpRRQ, 0)
		if rrq.file != "cfg/node.yaml" || rrq.mode != "octet" || rrq.opts["blksize"] != "1468" || rrq.opts["tsize"] != "0" {
			t.Errorf("server: RRQ = %+v", rrq)
		}
		// The transfer runs from a new port, the server's TID.
		xfer.WriteToUDPAddrPort(data(1, block(1)), client)
		expect(t, xfer, tftpACK, 1)
		// A packet from another port must be refused, not used.
		stray.WriteToUDPAddrPort(data(2, bytes.Repeat([]byte("X"), tftpDefBlksize)), client)
		if p, _ := expect(t, stray, tftpERROR, 0); p.code != tftpErrUnknownTID {
			t.Errorf("server: stray got error code %d, want %d", p.code, tftpErrUnknownTID)
		}
		xfer.WriteToUDPAddrPort(data(2, block(2)), client)
		expect(t, xfer, tftpACK, 2)
		xfer.WriteToUDPAddrPort(data(2, block(2)), client) // duplicate: our DATA looked lost
		expect(t, xfer, tftpACK, 2)
		// DATA 3 is "lost": the client's timeout must resend ACK 2.
		expect(t, xfer, tftpACK, 2)
		for n := uint16(3); n <= 6; n++ {
			xfer.WriteToUDPAddrPort(data(n, block(n)), client)
			expect(t, xfer, tftpACK, n)
		}
	}()
	got, err := tftpGet(t.Context(), listen.LocalAddr().String(), "cfg/node.yaml", tftpConfig{timeout: 200 * time.Millisecond})
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, file) {
		t.Errorf("tftpGet = %d bytes (sha256 %s), want %d bytes (sha256 %s)", len(got), sha(got), len(file), sha(file))
	}
}

func TestTFTPNoAnswerAndCancel(t *testing.T) {
	silent := udpListen(t)
	start := time.Now()
	_, err := tftpGet(t.Context(), silent.LocalAddr().String(), "f", tftpConfig{timeout: 50 * time.Millisecond, retries: 3})
	if err == nil || !strings.Contains(err.Error(), "no answer after 3 retransmissions") {
		t.Errorf("tftpGet from a silent server = %v, want a timeout after 3 retransmissions", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("tftpGet took %s to time out", took)
	}

	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	start = time.Now()
	_, err = tftpGet(ctx, silent.LocalAddr().String(), "f", tftpConfig{timeout: 10 * time.Second})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("tftpGet after cancel = %v, want context.Canceled", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("tftpGet took %s to notice the cancellation", took)
	}
}

// syncBuffer collects dnsmasq's log for a failing test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDnsmasqTFTP runs dnsmasq's TFTP server on 127.0.0.1:69 in a fresh
// network namespace (dnsmasq has no option for another TFTP port) and
// returns that namespace's path.
func startDnsmasqTFTP(t *testing.T, root string) string {
	t.Helper()
	needRoot(t)
	needTools(t, "dnsmasq", "unshare", "ip")
	// unshare and sh exec in place, so the process is dnsmasq itself.
	cmd := exec.Command("unshare", "--net", "sh", "-c", `ip link set lo up && exec dnsmasq --no-daemon --conf-file=/dev/null `+
		`--port=0 --enable-tftp --tftp-root="$1" --listen-address=127.0.0.1 --bind-interfaces --user=root --pid-file= --log-facility=-`,
		"sh", root)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log syncBuffer
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(&log, sc.Text())
			if strings.Contains(sc.Text(), "TFTP root is") {
				close(ready)
				break
			}
		}
		io.Copy(&log, stderr)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("dnsmasq log:\n%s", log.String())
		}
	})
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatalf("dnsmasq did not start its TFTP server:\n%s", log.String())
	}
	return fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)
}

func TestTFTPDnsmasq(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	file := randomBytes(200 << 10) // 140 blocks of 1468
	wrap := randomBytes(600_000)   // 75000 blocks of 8: block numbers wrap past 65535
	writeTree(t, root, map[string][]byte{"nodes/a.yaml": file, "wrap.bin": wrap})
	ns := startDnsmasqTFTP(t, root)
	const server = "127.0.0.1:69"

	t.Run("200KiB", func(t *testing.T) {
		var got []byte
		var err error
		var st tftpStats
		inNetns(t, ns, func() { got, err = tftpGet(t.Context(), server, "nodes/a.yaml", tftpConfig{stats: &st}) })
		if err != nil {
			t.Fatal(err)
		}
		if st.blksize != tftpBlksize || st.blocks != len(file)/tftpBlksize+1 {
			t.Errorf("transfer used blksize %d and %d blocks, want %d and %d", st.blksize, st.blocks, tftpBlksize, len(file)/tftpBlksize+1)
		}
		if !bytes.Equal(got, file) {
			t.Errorf("tftpGet = %d bytes (sha256 %s), want %d bytes (sha256 %s)", len(got), sha(got), len(file), sha(file))
		}
	})

	t.Run("block number wrap-around", func(t *testing.T) {
		if testing.Short() {
			t.Skip("75000 round trips")
		}
		var got []byte
		var err error
		var st tftpStats
		inNetns(t, ns, func() { got, err = tftpGet(t.Context(), server, "wrap.bin", tftpConfig{blksize: 8, stats: &st}) })
		if err != nil {
			t.Fatal(err)
		}
		if st.blksize != 8 || st.blocks <= 65536 {
			t.Errorf("transfer used blksize %d and %d blocks, want 8 and more than 65536", st.blksize, st.blocks)
		}
		if !bytes.Equal(got, wrap) {
			t.Errorf("tftpGet = %d bytes (sha256 %s), want %d bytes (sha256 %s)", len(got), sha(got), len(wrap), sha(wrap))
		}
	})

	t.Run("tsize over the cap", func(t *testing.T) {
		var err error
		inNetns(t, ns, func() { _, err = tftpGet(t.Context(), server, "nodes/a.yaml", tftpConfig{max: 100 << 10}) })
		if !errors.Is(err, ErrTooLarge) {
			t.Errorf("tftpGet = %v, want ErrTooLarge", err)
		}
	})

	t.Run("missing file", func(t *testing.T) {
		var err error
		inNetns(t, ns, func() { _, err = tftpGet(t.Context(), server, "nodes/missing.yaml", tftpConfig{}) })
		var te *tftpError
		if !errors.As(err, &te) || te.Code != tftpErrNotFound {
			t.Errorf("tftpGet = %v, want a tftp error %d", err, tftpErrNotFound)
		}
	})

	t.Run("Fetch with sha256", func(t *testing.T) {
		var res *Result
		var err error
		url := "tftp://127.0.0.1/nodes/a.yaml"
		inNetns(t, ns, func() {
			res, err = Fetch(t.Context(), Options{Cmdline: map[string]string{KeyURL: url, KeySHA256: sha(file)},
				Root: t.TempDir(), Devices: []string{}, Log: testLog(t)})
		})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.Data, file) || res.Source != "cmdline:"+url {
			t.Errorf("Fetch = %d bytes from %q, want %d bytes from %s", len(res.Data), res.Source, len(file), url)
		}
	})

	t.Run("Fetch missing file is final", func(t *testing.T) {
		var err error
		start := time.Now()
		inNetns(t, ns, func() {
			_, err = Fetch(t.Context(), Options{Cmdline: map[string]string{KeyURL: "tftp://127.0.0.1/nodes/missing.yaml"},
				Root: t.TempDir(), Devices: []string{}, Log: testLog(t)})
		})
		if err == nil || !strings.Contains(err.Error(), "file not found") || !strings.Contains(err.Error(), "TFTP server's root") {
			t.Errorf("Fetch = %v, want a final file-not-found error", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Fetch took %s: a missing file was retried", took)
		}
	})
}
