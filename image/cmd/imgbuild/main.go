// Command imgbuild turns a ballast recipe into bootable artifacts.
//
//	imgbuild --recipe control-plane --out out/
//	imgbuild recipes
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/recipes"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "imgbuild:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "recipes" {
		for _, name := range recipes.Names() {
			r, err := image.LoadRecipe(name)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%-16s %s\n", name, r.Description)
		}
		return nil
	}
	fs := flag.NewFlagSet("imgbuild", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		recipe     = fs.String("recipe", "", "embedded recipe name (see `imgbuild recipes`) or path to a recipe file")
		out        = fs.String("out", "out", "output directory; artifacts go to OUT/<recipe>/")
		initagent  = fs.String("initagent", "", "prebuilt initagent binary (default: build it from the source tree)")
		cache      = fs.String("kernel-cache", "", "kernel cache directory (default: $BALLAST_CACHE/kernel or ~/.cache/ballast/kernel)")
		ca         = fs.String("ca-bundle", image.DefaultCABundle, "CA bundle to put in the image")
		machineCfg = fs.String("config", "", "machine config to embed (validated now; used when the node finds no other)")
		verbose    = fs.Bool("v", false, "debug logs")
	)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: imgbuild --recipe NAME|PATH [--out DIR]\n       imgbuild recipes")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see imgbuild -h)", fs.Arg(0))
	}
	if *recipe == "" {
		return fmt.Errorf("--recipe is required: one of the embedded recipes (`imgbuild recipes`) or a path")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	r, err := image.LoadRecipe(*recipe)
	if err != nil {
		return err
	}
	opts := image.Options{Recipe: r, OutDir: *out, Initagent: *initagent, KernelCache: *cache, CABundle: *ca, Config: *machineCfg, Progress: stdout, Log: log}
	if *initagent == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		if opts.SourceDir, err = image.FindSourceDir(wd); err != nil {
			return fmt.Errorf("%w: run imgbuild inside the ballast checkout, or pass --initagent", err)
		}
	}
	_, err = image.Build(ctx, opts)
	return err
}
