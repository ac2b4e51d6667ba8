// Command buildpayload builds the node payload by hand:
//
//	go run ./image/payload/cmd/buildpayload [-cache DIR] [-role control-plane|worker] [-o system.sqfs] [component...]
//
// With components it only builds those (see payload.Components); otherwise it
// builds the role's system.sqfs and copies it to -o if given.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/ballast-os/ballast/image/payload"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "buildpayload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("buildpayload", flag.ContinueOnError)
	cache := fs.String("cache", "", "cache directory (default ~/.cache/ballast/payload)")
	role := fs.String("role", payload.RoleControlPlane, "node role: control-plane or worker")
	out := fs.String("o", "", "copy system.sqfs here")
	verbose := fs.Bool("v", false, "show the go command's output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b := &payload.Builder{CacheDir: *cache, Log: slog.New(slog.NewTextHandler(stderr, nil))}
	if *verbose {
		b.Stderr = stderr
	}
	if fs.NArg() > 0 {
		bins, err := b.Build(ctx, fs.Args()...)
		if err != nil {
			return err
		}
		names := make([]string, 0, len(bins))
		for n := range bins {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(stdout, "%s\t%s\n", n, bins[n])
		}
		return nil
	}
	path, err := b.System(ctx, *role)
	if err != nil {
		return err
	}
	if *out != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*out, data, 0o644); err != nil {
			return err
		}
		path = *out
	}
	fmt.Fprintln(stdout, path)
	return nil
}
