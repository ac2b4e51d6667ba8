package source

// A TFTP read client: RFC 1350 (octet mode), RFC 2347 option negotiation,
// RFC 2348 blksize and RFC 2349 tsize. Only what fetching one small file
// needs: no write requests, no windowsize, no multicast.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Opcodes, RFC 1350 §5 and RFC 2347 (OACK).
const (
	tftpRRQ   = 1
	tftpWRQ   = 2
	tftpDATA  = 3
	tftpACK   = 4
	tftpERROR = 5
	tftpOACK  = 6
)

// Error codes, RFC 1350 appendix and RFC 2347 (8).
const (
	tftpErrUndefined  = 0
	tftpErrNotFound   = 1
	tftpErrAccess     = 2
	tftpErrDiskFull   = 3
	tftpErrIllegal    = 4
	tftpErrUnknownTID = 5
	tftpErrOptions    = 8
)

const (
	tftpPort = "69"
	// tftpBlksize fills a 1500-byte Ethernet frame: 1500 - 20 (IPv4) - 8 (UDP)
	// - 4 (TFTP header). Larger blocks would be IP-fragmented, which some
	// networks drop. RFC 2348 §2 uses the same example.
	tftpBlksize    = 1468
	tftpMaxBlksize = 65464 // RFC 2348 §2
	tftpMinBlksize = 8     // RFC 2348 §2
	tftpDefBlksize = 512   // RFC 1350, when the server ignores options
)

// tftpError is an ERROR packet from the server.
type tftpError struct {
	Code    uint16
	Message string
}

func (e *tftpError) Error() string {
	names := map[uint16]string{
		tftpErrUndefined: "undefined", tftpErrNotFound: "file not found", tftpErrAccess: "access violation",
		tftpErrDiskFull: "disk full", tftpErrIllegal: "illegal operation", tftpErrUnknownTID: "unknown transfer ID",
		6: "file exists", 7: "no such user", tftpErrOptions: "option negotiation refused",
	}
	name, ok := names[e.Code]
	if !ok {
		name = "unknown code"
	}
	return fmt.Sprintf("tftp server error %d (%s): %q", e.Code, name, e.Message)
}

type tftpOption struct{ name, value string }

// tftpPacket is one decoded packet; which fields are set depends on op.
type tftpPacket struct {
	op    uint16
	file  string            // RRQ, WRQ
	mode  string            // RRQ, WRQ
	opts  map[string]string // RRQ, WRQ, OACK; names lowercased (RFC 2347: case-insensitive)
	block uint16            // DATA, ACK
	data  []byte            // DATA; aliases the input
	code  uint16            // ERROR
	msg   string            // ERROR
}

func encodeRRQ(file string, opts []tftpOption) []byte {
	b := binary.BigEndian.AppendUint16(nil, tftpRRQ)
	b = append(append(b, file...), 0)
	b = append(b, "octet\x00"...)
	for _, o := range opts {
		b = append(append(b, o.name...), 0)
		b = append(append(b, o.value...), 0)
	}
	return b
}

func encodeACK(block uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, tftpACK), block)
}

func encodeError(code uint16, msg string) []byte {
	b := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, tftpERROR), code)
	return append(append(b, msg...), 0)
}

// parseTFTP decodes a packet. It never panics on malformed input.
func parseTFTP(b []byte) (tftpPacket, error) {
	if len(b) < 2 {
		return tftpPacket{}, fmt.Errorf("tftp packet of %d bytes is too short", len(b))
	}
	p := tftpPacket{op: binary.BigEndian.Uint16(b)}
	rest := b[2:]
	switch p.op {
	case tftpRRQ, tftpWRQ, tftpOACK:
		strs, err := splitZ(rest)
		if err != nil {
			return p, err
		}
		if p.op != tftpOACK {
			if len(strs) < 2 {
				return p, errors.New("tftp request without file name and mode")
			}
			p.file, p.mode, strs = strs[0], strings.ToLower(strs[1]), strs[2:]
		}
		if len(strs)%2 != 0 {
			return p, fmt.Errorf("tftp option %q has no value", strs[len(strs)-1])
		}
		p.opts = map[string]string{}
		for i := 0; i < len(strs); i += 2 {
			p.opts[strings.ToLower(strs[i])] = strs[i+1]
		}
	case tftpDATA, tftpACK:
		if len(rest) < 2 {
			return p, errors.New("tftp DATA/ACK without block number")
		}
		p.block = binary.BigEndian.Uint16(rest)
		if p.op == tftpDATA {
			p.data = rest[2:]
		} else if len(rest) != 2 {
			return p, errors.New("tftp ACK with trailing bytes")
		}
	case tftpERROR:
		if len(rest) < 2 {
			return p, errors.New("tftp ERROR without code")
		}
		p.code = binary.BigEndian.Uint16(rest)
		// Some servers omit the final NUL; accept the message either way.
		p.msg, _, _ = strings.Cut(string(rest[2:]), "\x00")
	default:
		return p, fmt.Errorf("unknown tftp opcode %d", p.op)
	}
	return p, nil
}

// splitZ splits a sequence of NUL-terminated strings.
func splitZ(b []byte) ([]string, error) {
	var out []string
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return nil, errors.New("tftp string not NUL-terminated")
		}
		out = append(out, string(b[:i]))
		b = b[i+1:]
	}
	return out, nil
}

// tftpConfig tunes tftpGet; zero fields take the defaults.
type tftpConfig struct {
	blksize int           // requested block size; tftpBlksize
	max     int64         // size cap; MaxSize
	timeout time.Duration // before a retransmission; 1s
	retries int           // retransmissions of one packet before giving up; 5
	stats   *tftpStats    // if set, filled in when the transfer ends
}

// tftpStats describes a finished transfer, for tests.
type tftpStats struct {
	blksize int // negotiated
	blocks  int // DATA blocks received
}

func tftpAddr(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = tftpPort
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// tftpGet reads file from the TFTP server at addr (host:port).
func tftpGet(ctx context.Context, addr, file string, c tftpConfig) ([]byte, error) {
	if c.blksize == 0 {
		c.blksize = tftpBlksize
	}
	if c.max == 0 {
		c.max = MaxSize
	}
	if c.timeout == 0 {
		c.timeout = time.Second
	}
	if c.retries == 0 {
		c.retries = 5
	}
	server, err := resolveUDP(ctx, addr)
	if err != nil {
		return nil, err
	}
	network := "udp6"
	if server.Addr().Is4() {
		network = "udp4"
	}
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, fmt.Errorf("tftp: open UDP socket: %w", err)
	}
	defer conn.Close()
	// Closing the socket is what interrupts a blocked read on cancellation.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	t := &tftpTransfer{conn: conn, server: server, cfg: c, blksize: tftpDefBlksize}
	data, err := t.run(ctx, file)
	if c.stats != nil {
		*c.stats = tftpStats{blksize: t.blksize, blocks: t.blocks}
	}
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("tftp get %q from %s: %w", file, server, err)
	}
	return data, nil
}

// tftpTransfer is the state of one read request.
type tftpTransfer struct {
	conn    *net.UDPConn
	server  netip.AddrPort // where the RRQ goes (port 69)
	peer    netip.AddrPort // the server's transfer ID: the port its first answer came from
	cfg     tftpConfig
	blksize int
	last    []byte // the packet to retransmit on timeout
	block   uint16 // number of the last DATA block received; wraps at 65535
	blocks  int    // DATA blocks received
	buf     bytes.Buffer
}

func (t *tftpTransfer) send(p []byte) error {
	t.last = p
	to := t.peer
	if !to.IsValid() {
		to = t.server
	}
	_, err := t.conn.WriteToUDPAddrPort(p, to)
	return err
}

// abort tells the peer why we stop, best effort (RFC 1350 §7).
func (t *tftpTransfer) abort(code uint16, msg string) {
	if t.peer.IsValid() {
		t.conn.WriteToUDPAddrPort(encodeError(code, msg), t.peer)
	}
}

func (t *tftpTransfer) run(ctx context.Context, file string) ([]byte, error) {
	rrq := encodeRRQ(file, []tftpOption{{"blksize", strconv.Itoa(t.cfg.blksize)}, {"tsize", "0"}})
	if err := t.send(rrq); err != nil {
		return nil, err
	}
	in := make([]byte, 4+tftpMaxBlksize)
	timeouts := 0
	for {
		if err := t.conn.SetReadDeadline(time.Now().Add(t.cfg.timeout)); err != nil {
			return nil, err
		}
		n, from, err := t.conn.ReadFromUDPAddrPort(in)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			timeouts++
			if timeouts > t.cfg.retries {
				return nil, fmt.Errorf("no answer after %d retransmissions %s apart (block %d)", t.cfg.retries, t.cfg.timeout, t.block)
			}
			if err := t.send(t.last); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if !t.peer.IsValid() {
			if from.Addr().WithZone("") != t.server.Addr().WithZone("") {
				continue // not from the server we asked
			}
			t.peer = from // RFC 1350 §4: the server answers from a new port, its TID
		} else if from != t.peer {
			// Another transfer (e.g. one our retransmitted RRQ started): RFC 1350 §4.
			t.conn.WriteToUDPAddrPort(encodeError(tftpErrUnknownTID, "unknown transfer ID"), from)
			continue
		}
		p, err := parseTFTP(in[:n])
		if err != nil {
			t.abort(tftpErrIllegal, err.Error())
			return nil, err
		}
		done, err := t.handle(p)
		if err != nil {
			return nil, err
		}
		timeouts = 0
		if done {
			return t.buf.Bytes(), nil
		}
	}
}

// handle processes one packet from the peer and sends the answer.
func (t *tftpTransfer) handle(p tftpPacket) (done bool, err error) {
	switch p.op {
	case tftpERROR:
		return false, &tftpError{Code: p.code, Message: p.msg}
	case tftpOACK:
		if t.blocks > 0 {
			return false, nil // late duplicate
		}
		if err := t.acceptOptions(p.opts); err != nil {
			t.abort(tftpErrOptions, err.Error())
			return false, err
		}
		return false, t.send(encodeACK(0)) // RFC 2347: ACK 0 confirms the options
	case tftpDATA:
		switch {
		case p.block == t.block+1: // uint16: 65535+1 == 0, the usual wrap-around
			if len(p.data) > t.blksize {
				t.abort(tftpErrIllegal, "block larger than blksize")
				return false, fmt.Errorf("block %d has %d bytes, blksize is %d", p.block, len(p.data), t.blksize)
			}
			if int64(t.buf.Len()+len(p.data)) > t.cfg.max {
				t.abort(tftpErrDiskFull, "file too large")
				return false, fmt.Errorf("file is %w", ErrTooLarge)
			}
			t.buf.Write(p.data)
			t.block++
			t.blocks++
			// A short block ends the file (RFC 1350 §6). We do not dally for a
			// lost final ACK: the server's retransmissions time out harmlessly.
			return len(p.data) < t.blksize, t.send(encodeACK(t.block))
		case p.block == t.block && t.blocks > 0:
			return false, t.send(encodeACK(t.block)) // our ACK was lost
		}
		return false, nil // stale
	default:
		t.abort(tftpErrIllegal, "unexpected opcode")
		return false, fmt.Errorf("unexpected tftp opcode %d during a read", p.op)
	}
}

func (t *tftpTransfer) acceptOptions(opts map[string]string) error {
	for name, v := range opts {
		switch name {
		case "blksize":
			n, err := strconv.Atoi(v)
			if err != nil || n < tftpMinBlksize || n > t.cfg.blksize {
				return fmt.Errorf("server chose blksize %q, asked for at most %d", v, t.cfg.blksize)
			}
			t.blksize = n
		case "tsize":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return fmt.Errorf("server sent tsize %q", v)
			}
			if n > t.cfg.max {
				return fmt.Errorf("file of %d bytes is %w", n, ErrTooLarge)
			}
		default:
			return fmt.Errorf("server acknowledged option %q, which was not requested", name)
		}
	}
	return nil
}

func resolveUDP(ctx context.Context, hostport string) (netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("tftp server %q: %w", hostport, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("tftp server %q: bad port: %w", hostport, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("tftp server: %w", err)
		}
		ip = ips[0]
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}
