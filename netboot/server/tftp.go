package server

// A read-only TFTP server: RFC 1350 (octet mode), option negotiation (RFC
// 2347) with blksize (RFC 2348), timeout and tsize (RFC 2349). It serves
// the iPXE binaries that PXE ROMs chainload; nothing is writable.
//
// TFTP answers whoever a request claims to come from, so it is kept from
// being a reflection amplifier and a way to exhaust the server:
//   - at most maxTransfers transfers run at once, and maxPerSource from
//     one IP address; requests beyond them are dropped unanswered (clients
//     retry; the log says why, at most once a second);
//   - a timeout option is honoured up to tftpMaxTimeout seconds, larger
//     ones are left out of the OACK (the default applies);
//   - before the client has acknowledged anything, little is sent: with
//     options, the OACK (tens of bytes) at most tftpOACKTries times, and
//     no DATA until the client ACKs block 0 from the address and port the
//     request came from; without options, the first DATA block at most
//     tftpFirstTries times (once, plus one retransmission). That block is
//     not shortened: RFC 1350 blocks are 512 bytes and a short one ends
//     the transfer, so a 20-byte RRQ can draw at most 2×516 bytes to an
//     unverified address. Only after the first ACK are blocks resent the
//     full tftpRetries times.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	tftpRRQ   = 1
	tftpWRQ   = 2
	tftpDATA  = 3
	tftpACK   = 4
	tftpERROR = 5
	tftpOACK  = 6

	tftpErrUndefined = 0
	tftpErrNotFound  = 1
	tftpErrAccess    = 2
	tftpErrIllegal   = 4
	tftpErrOptions   = 8

	tftpDefaultBlksize = 512
	tftpMinBlksize     = 8
	tftpMaxBlksize     = 65464
	// tftpMaxTimeout is the largest timeout option honoured, in seconds.
	tftpMaxTimeout = 5
	// tftpRetries is how often one packet is sent before the transfer is
	// given up, once the client has acknowledged something.
	tftpRetries = 6
	// Before that: how often the OACK, or the first DATA block of a
	// transfer without options, is sent.
	tftpOACKTries  = 3
	tftpFirstTries = 2

	// DefaultTFTPMaxTransfers and DefaultTFTPMaxPerSource are the default
	// caps on concurrent TFTP transfers, in all and from one IP address.
	DefaultTFTPMaxTransfers = 64
	DefaultTFTPMaxPerSource = 4
)

type tftpLimits struct {
	maxTransfers, maxPerSource int
	unit                       time.Duration // of the timeout option: a second
}

type tftpServer struct {
	conn   *net.UDPConn
	root   string
	log    *slog.Logger
	seen   *seen
	limits tftpLimits

	mu       sync.Mutex
	active   int
	bySource map[netip.Addr]int
	// Dropped requests are logged at most once per unit.
	lastDropLog time.Time
	dropped     int
}

func newTFTPServer(addr, root string, log *slog.Logger, sn *seen, limits tftpLimits) (*tftpServer, error) {
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("tftp root %q is not a directory (%v): install Debian's ipxe package or pass the directory holding undionly.kpxe and ipxe.efi", root, err)
	}
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("tftp address %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp4", ua)
	if err != nil {
		return nil, fmt.Errorf("tftp %s: %w", addr, err)
	}
	return &tftpServer{conn: conn, root: root, log: log, seen: sn, limits: limits, bySource: map[netip.Addr]int{}}, nil
}

// acquire takes a transfer slot for src, or reports why there is none.
func (t *tftpServer) acquire(src netip.Addr) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.active >= t.limits.maxTransfers:
		return fmt.Sprintf("%d transfers running, the most allowed (--tftp-max-transfers)", t.active), false
	case t.bySource[src] >= t.limits.maxPerSource:
		return fmt.Sprintf("%d transfers running for %s, the most allowed from one address (--tftp-max-per-source)", t.bySource[src], src), false
	}
	t.active++
	t.bySource[src]++
	return "", true
}

func (t *tftpServer) release(src netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.active--
	if t.bySource[src]--; t.bySource[src] <= 0 {
		delete(t.bySource, src)
	}
}

// logDrop logs a dropped request, at most once a second (a flood of
// requests must not become a flood of log lines).
func (t *tftpServer) logDrop(peer netip.AddrPort, file, reason string) {
	t.mu.Lock()
	now := time.Now()
	t.dropped++
	if !t.lastDropLog.IsZero() && now.Sub(t.lastDropLog) < time.Second {
		t.mu.Unlock()
		return
	}
	n := t.dropped
	t.lastDropLog, t.dropped = now, 0
	t.mu.Unlock()
	t.log.Warn("tftp request dropped", "mac", t.seen.macOf(peer.Addr()), "ip", peer.Addr().String(), "file", file,
		"reason", reason, "dropped", n)
}

func (t *tftpServer) close() { t.conn.Close() }

func (t *tftpServer) serve(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { t.conn.Close() })
	defer stop()
	buf := make([]byte, 1500)
	for {
		n, peer, err := t.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		req, err := parseTFTPRequest(buf[:n])
		if err != nil {
			t.log.Debug("tftp: ignoring packet", "peer", peer.String(), "err", err)
			continue
		}
		src := peer.Addr().Unmap()
		if reason, ok := t.acquire(src); !ok {
			t.logDrop(peer, req.file, reason)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			release := func() { once.Do(func() { t.release(src) }) }
			defer release()
			t.transfer(ctx, peer, req, release)
		}()
	}
}

type tftpRequest struct {
	op   uint16
	file string
	mode string
	opts map[string]string // names lowercased
}

func parseTFTPRequest(b []byte) (*tftpRequest, error) {
	if len(b) < 4 {
		return nil, errors.New("short packet")
	}
	op := binary.BigEndian.Uint16(b)
	if op != tftpRRQ && op != tftpWRQ {
		return nil, fmt.Errorf("opcode %d on the request port", op)
	}
	fields := bytes.Split(b[2:], []byte{0})
	// A well-formed request ends with NUL, leaving one empty last field.
	if len(fields) < 3 || len(fields[len(fields)-1]) != 0 {
		return nil, errors.New("malformed request")
	}
	fields = fields[:len(fields)-1]
	req := &tftpRequest{op: op, file: string(fields[0]), mode: strings.ToLower(string(fields[1])), opts: map[string]string{}}
	for i := 2; i+1 < len(fields); i += 2 {
		req.opts[strings.ToLower(string(fields[i]))] = string(fields[i+1])
	}
	return req, nil
}

// cleanName turns a requested file name into a path relative to the root,
// or reports why it is refused.
func cleanName(name string) (string, error) {
	name = strings.ReplaceAll(name, `\`, "/") // some PXE ROMs send DOS paths
	name = strings.TrimLeft(name, "/")
	if name == "" || strings.ContainsRune(name, 0) {
		return "", errors.New("empty file name")
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", errors.New("path leaves the TFTP root")
		}
	}
	return path.Clean(name), nil
}

func tftpErrorPacket(code uint16, msg string) []byte {
	b := binary.BigEndian.AppendUint16(nil, tftpERROR)
	b = binary.BigEndian.AppendUint16(b, code)
	return append(append(b, msg...), 0)
}

// transfer serves one request; it calls release, which frees its slot,
// before it logs how the transfer ended.
func (t *tftpServer) transfer(ctx context.Context, peer netip.AddrPort, req *tftpRequest, release func()) {
	mac := t.seen.macOf(peer.Addr())
	log := t.log.With("mac", mac, "ip", peer.Addr().String(), "file", req.file)
	// A new socket is the transfer ID (RFC 1350 §4); connecting it makes the
	// kernel drop packets from any other peer.
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(peer))
	if err != nil {
		log.Error("tftp: cannot open a transfer socket", "err", err)
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	fail := func(code uint16, msg string) {
		release()
		log.Warn("tftp refused", "code", code, "reason", msg)
		conn.Write(tftpErrorPacket(code, msg))
	}
	if req.op == tftpWRQ {
		fail(tftpErrAccess, "read-only server")
		return
	}
	if req.mode != "octet" && req.mode != "netascii" {
		fail(tftpErrIllegal, "mode "+req.mode+" is not supported, use octet")
		return
	}
	name, err := cleanName(req.file)
	if err != nil {
		fail(tftpErrAccess, err.Error())
		return
	}
	// Symlinks are followed: Debian links /usr/lib/ipxe/ipxe.efi to /boot.
	f, err := os.Open(filepath.Join(t.root, filepath.FromSlash(name)))
	if err != nil {
		fail(tftpErrNotFound, "file not found")
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		fail(tftpErrNotFound, "file not found")
		return
	}

	blksize, timeout := tftpDefaultBlksize, t.limits.unit
	var oack []byte
	if v, ok := req.opts["blksize"]; ok {
		if n, err := strconv.Atoi(v); err == nil && n >= tftpMinBlksize {
			blksize = min(n, tftpMaxBlksize)
			oack = appendOpt(oack, "blksize", strconv.Itoa(blksize))
		}
	}
	if v, ok := req.opts["timeout"]; ok {
		// Larger values are left out of the OACK: the client then uses
		// the default, as RFC 2349 has it for options a server declines.
		if n, err := strconv.Atoi(v); err == nil && n >= 1 && n <= tftpMaxTimeout {
			timeout = time.Duration(n) * t.limits.unit
			oack = appendOpt(oack, "timeout", strconv.Itoa(n))
		}
	}
	if _, ok := req.opts["tsize"]; ok {
		oack = appendOpt(oack, "tsize", strconv.FormatInt(fi.Size(), 10))
	}
	start := time.Now()
	log.Info("tftp transfer", "size", fi.Size(), "blksize", blksize, "options", len(oack) > 0)

	ackBuf := make([]byte, 516)
	// send sends pkt and waits for the ACK of block, sending it at most
	// tries times.
	send := func(pkt []byte, block uint16, tries int) error {
		for try := 0; try < tries; try++ {
			if _, err := conn.Write(pkt); err != nil {
				return err
			}
			deadline := time.Now().Add(timeout)
			for {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				conn.SetReadDeadline(deadline)
				n, err := conn.Read(ackBuf)
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					break // retransmit
				}
				if err != nil {
					return err
				}
				if n < 4 {
					continue
				}
				switch binary.BigEndian.Uint16(ackBuf) {
				case tftpACK:
					if binary.BigEndian.Uint16(ackBuf[2:]) == block {
						return nil
					}
					// A duplicate ACK of an older block: never answer it with a
					// retransmission (Sorcerer's Apprentice, RFC 1123 4.2.3.1).
				case tftpERROR:
					code := binary.BigEndian.Uint16(ackBuf[2:])
					msg := strings.TrimRight(string(ackBuf[4:n]), "\x00")
					return fmt.Errorf("client sent error %d: %q", code, msg)
				}
			}
		}
		return fmt.Errorf("no ACK for block %d after %d tries", block, tries)
	}

	if len(oack) > 0 {
		pkt := append(binary.BigEndian.AppendUint16(nil, tftpOACK), oack...)
		if err := send(pkt, 0, tftpOACKTries); err != nil {
			release()
			log.Warn("tftp transfer failed", "stage", "oack", "err", err)
			return
		}
	}
	pkt := make([]byte, 4+blksize)
	binary.BigEndian.PutUint16(pkt, tftpDATA)
	var off int64
	for block := uint16(1); ; block++ { // wraps to 0 after 65535, as most clients expect
		n, err := f.ReadAt(pkt[4:], off)
		if err != nil && err != io.EOF {
			fail(tftpErrUndefined, "read error")
			return
		}
		binary.BigEndian.PutUint16(pkt[2:], block)
		tries := tftpRetries
		if off == 0 && len(oack) == 0 {
			tries = tftpFirstTries // nothing from the client yet but its request
		}
		if err := send(pkt[:4+n], block, tries); err != nil {
			release()
			log.Warn("tftp transfer failed", "block", block, "err", err)
			return
		}
		off += int64(n)
		if n < blksize {
			break
		}
	}
	release()
	log.Info("tftp transfer done", "bytes", off, "ms", time.Since(start).Milliseconds())
}

func appendOpt(b []byte, name, value string) []byte {
	b = append(append(b, name...), 0)
	return append(append(b, value...), 0)
}
