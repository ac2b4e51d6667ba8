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
	"strconv"
	"strings"
	"testing"
	"time"
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
