// Package qemutests boots ballast artifacts in QEMU and checks what the
// node prints on its serial console. One scenario per _test.go file.
//
// Flags (go test ./qemu-tests -args ...):
//
//	-out DIR     use artifacts already built in DIR/<recipe>/ instead of building them
//	-accel NAME  QEMU accelerator: tcg (default; KVM hangs on the CI machines) or kvm
package qemutests

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// OVMF from Debian's ovmf package.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

// VMOptions describe one QEMU machine.
type VMOptions struct {
	// Kernel, Initrd and Cmdline boot a kernel directly; without Kernel the
	// machine boots through its firmware (disks, the NIC's iPXE ROM).
	Kernel, Initrd string
	Cmdline        []string
	// UEFI boots OVMF (with a fresh copy of its variable store) instead of
	// SeaBIOS.
	UEFI      bool
	MemoryMiB int      // zero means 512
	CPUs      int      // zero means 2
	Accel     string   // zero means "tcg"
	Args      []string // extra QEMU arguments (NICs, disks)
	// Netns runs QEMU inside this network namespace (for tap devices made there).
	Netns string
	// NoVirtio leaves out the virtio RNG StartVM adds otherwise: a machine
	// with only emulated real hardware.
	NoVirtio bool
	// QEMU is the emulator binary; empty means qemu-system-x86_64 from PATH.
	QEMU string
}

// VM is a running QEMU with its serial console captured.
type VM struct {
	cmd     *exec.Cmd
	qmpPath string
	dir     string

	mu      sync.Mutex
	lines   []string // every console line so far
	changed chan struct{}
	exited  chan struct{}
	waitErr error
}

// consoleTail is how many console lines a failure shows.
const consoleTail = 100

// StartVM starts QEMU. Stop it with Kill (always safe) when done.
func StartVM(opts VMOptions) (*VM, error) {
	qemu := opts.QEMU
	if qemu == "" {
		var err error
		if qemu, err = exec.LookPath("qemu-system-x86_64"); err != nil {
			return nil, errors.New("qemu-system-x86_64 not found: run `apt-get install -y qemu-system-x86` (or `make deps`)")
		}
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = 512
	}
	if opts.CPUs == 0 {
		opts.CPUs = 2
	}
	if opts.Accel == "" {
		opts.Accel = "tcg"
	}
	dir, err := os.MkdirTemp("", "ballast-vm-")
	if err != nil {
		return nil, err
	}
	vm := &VM{qmpPath: filepath.Join(dir, "qmp.sock"), dir: dir, changed: make(chan struct{}), exited: make(chan struct{})}
	args := []string{
		"-accel", opts.Accel,
		"-m", fmt.Sprint(opts.MemoryMiB),
		"-smp", fmt.Sprint(opts.CPUs),
		"-display", "none",
		"-monitor", "none",
		"-serial", "stdio",
		"-no-reboot", // a reboot ends the process too; the console says which it was
		"-qmp", "unix:" + vm.qmpPath + ",server=on,wait=off",
	}
	if opts.Kernel != "" {
		args = append(args, "-kernel", opts.Kernel, "-initrd", opts.Initrd, "-append", strings.Join(opts.Cmdline, " "))
	}
	if opts.UEFI {
		vars := filepath.Join(dir, "vars.fd")
		if err := copyFile(ovmfVars, vars); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("OVMF variable store: %w (apt-get install -y ovmf)", err)
		}
		args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode, "-drive", "if=pflash,format=raw,file="+vars)
	}
	if !opts.NoVirtio {
		// TCG's CPU has no RDRAND: without a hardware RNG, getrandom(2) (DHCP
		// transaction IDs, TLS) can block for a long time at early boot.
		args = append(args, "-device", "virtio-rng-pci")
	}
	if !containsArg(opts.Args, "-nic") && !containsArg(opts.Args, "-netdev") {
		args = append(args, "-nic", "none")
	}
	args = append(args, opts.Args...)
	if opts.Netns != "" {
		args = append([]string{"netns", "exec", opts.Netns, qemu}, args...)
		qemu = "ip"
	}
	vm.cmd = exec.Command(qemu, args...)
	vm.cmd.Stdin = nil
	out, err := vm.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	vm.cmd.Stderr = vm.cmd.Stdout
	if err := vm.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go vm.readConsole(out)
	return vm, nil
}

func containsArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}

func (vm *VM) readConsole(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// Firmware paints the screen with escape sequences; drop them so patterns match plain text.
		line := ansiRE.ReplaceAllString(strings.TrimRight(sc.Text(), "\r"), "")
		if consoleFile != nil {
			fmt.Fprintln(consoleFile, line)
		}
		vm.mu.Lock()
		vm.lines = append(vm.lines, line)
		close(vm.changed)
		vm.changed = make(chan struct{})
		vm.mu.Unlock()
	}
	err := vm.cmd.Wait()
	vm.mu.Lock()
	vm.waitErr = err
	close(vm.changed)
	vm.changed = make(chan struct{})
	vm.mu.Unlock()
	close(vm.exited)
}

// consoleFile, when BALLAST_CONSOLE names a file, gets every console line as
// it arrives (to follow a long boot with tail -f).
var consoleFile = func() *os.File {
	name := os.Getenv("BALLAST_CONSOLE")
	if name == "" {
		return nil
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil
	}
	return f
}()

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[a-zA-Z]|\x1bc`)

// Expect waits for a console line matching re, scanning from line index
// from, and returns its submatches and the index after it.
func (vm *VM) Expect(ctx context.Context, re *regexp.Regexp, from int) ([]string, int, error) {
	for {
		vm.mu.Lock()
		for i := from; i < len(vm.lines); i++ {
			if m := re.FindStringSubmatch(vm.lines[i]); m != nil {
				vm.mu.Unlock()
				return m, i + 1, nil
			}
		}
		from = len(vm.lines)
		changed := vm.changed
		vm.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, from, fmt.Errorf("waiting for console line %q: %w", re, ctx.Err())
		case <-vm.exited:
			// Drain anything printed just before the exit, then give up.
			vm.mu.Lock()
			n := len(vm.lines)
			vm.mu.Unlock()
			if n > from {
				continue
			}
			return nil, from, fmt.Errorf("qemu exited (%v) before console line %q", vm.waitErr, re)
		case <-changed:
		}
	}
}

// Wait waits for QEMU to exit.
func (vm *VM) Wait(ctx context.Context) error {
	select {
	case <-vm.exited:
		return vm.waitErr
	case <-ctx.Done():
		return fmt.Errorf("waiting for qemu to exit: %w", ctx.Err())
	}
}

// Exited reports whether QEMU has exited.
func (vm *VM) Exited() bool {
	select {
	case <-vm.exited:
		return true
	default:
		return false
	}
}

// Kill stops QEMU if it still runs and removes its temporary files.
func (vm *VM) Kill() {
	if !vm.Exited() {
		_ = vm.cmd.Process.Kill()
		<-vm.exited
	}
	os.RemoveAll(vm.dir)
}

// Lines returns how many console lines were read so far (an index for Expect).
func (vm *VM) Lines() int {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return len(vm.lines)
}

// Tail returns the last n console lines.
func (vm *VM) Tail(n int) string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	start := max(0, len(vm.lines)-n)
	return strings.Join(vm.lines[start:], "\n")
}

// Powerdown presses the virtual ACPI power button (QMP system_powerdown).
func (vm *VM) Powerdown(ctx context.Context) error {
	return vm.qmp(ctx, "system_powerdown")
}

func (vm *VM) qmp(ctx context.Context, command string) error { return vm.QMP(ctx, command, nil) }

// QMP runs one QMP command with arguments (nil for none).
func (vm *VM) QMP(ctx context.Context, command string, arguments map[string]any) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", vm.qmpPath)
	if err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	dec := json.NewDecoder(conn)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return fmt.Errorf("qmp greeting: %w", err)
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		req := map[string]any{"execute": cmd}
		if cmd == command && arguments != nil {
			req["arguments"] = arguments
		}
		if err := json.NewEncoder(conn).Encode(req); err != nil {
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		for {
			var resp map[string]json.RawMessage
			if err := dec.Decode(&resp); err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
			if e, ok := resp["error"]; ok {
				return fmt.Errorf("qmp %s: %s", cmd, e)
			}
			if _, ok := resp["return"]; ok {
				break
			}
			// an asynchronous event; keep reading for the reply
		}
	}
	return nil
}
