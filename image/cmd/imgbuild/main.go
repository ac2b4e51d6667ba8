// Command imgbuild turns a ballast recipe into bootable artifacts.
//
//	imgbuild --recipe control-plane --out out/
//	imgbuild --recipe worker --system none    # placeholder system image, no payload build
//	imgbuild recipes
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/image/payload"
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

// --system values besides a path.
const (
	systemAuto = "auto" // build (or take from the cache) the payload for the recipe's role
	systemNone = "none" // the small placeholder image
)

// cli is the parsed command line.
type cli struct {
	recipe, out, initagent, kernelCache, caBundle, config string
	// system is systemAuto, systemNone or the absolute path of a squashfs.
	system       string
	payloadCache string
	verbose      bool
}

func parseFlags(args []string, stderr io.Writer) (*cli, error) {
	fs := flag.NewFlagSet("imgbuild", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &cli{}
	fs.StringVar(&c.recipe, "recipe", "", "embedded recipe name (see `imgbuild recipes`) or path to a recipe file")
	fs.StringVar(&c.out, "out", "out", "output directory; artifacts go to OUT/<recipe>/")
	fs.StringVar(&c.initagent, "initagent", "", "prebuilt initagent binary (default: build it from the source tree)")
	fs.StringVar(&c.kernelCache, "kernel-cache", "", "kernel cache directory (default: $BALLAST_CACHE/kernel or ~/.cache/ballast/kernel)")
	fs.StringVar(&c.caBundle, "ca-bundle", image.DefaultCABundle, "CA bundle to put in the image")
	fs.StringVar(&c.config, "config", "", "machine config to embed (validated now; used when the node finds no other)")
	fs.StringVar(&c.system, "system", systemAuto, "system image: auto (build the Kubernetes payload for the recipe's role, or take it from the payload cache), none (a small placeholder) or the path of a system.sqfs")
	fs.StringVar(&c.payloadCache, "payload-cache", "", "payload cache directory for --system auto (default: ~/.cache/ballast/payload)")
	fs.BoolVar(&c.verbose, "v", false, "debug logs (and the go command's output while building the payload)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: imgbuild --recipe NAME|PATH [--out DIR] [--system auto|none|PATH]\n       imgbuild recipes")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (see imgbuild -h)", fs.Arg(0))
	}
	if c.recipe == "" {
		return nil, fmt.Errorf("--recipe is required: one of the embedded recipes (`imgbuild recipes`) or a path")
	}
	switch c.system {
	case systemAuto, systemNone:
	default:
		path, err := checkSystemImage(c.system)
		if err != nil {
			return nil, err
		}
		c.system = path
	}
	if c.payloadCache != "" && c.system != systemAuto {
		return nil, fmt.Errorf("--payload-cache is only used with --system auto (got --system %s)", c.system)
	}
	return c, nil
}

// squashfsMagic starts every squashfs image ("hsqs", little-endian).
var squashfsMagic = []byte("hsqs")

// checkSystemImage returns the absolute path of a --system file after
// checking it is a squashfs image.
func checkSystemImage(path string) (string, error) {
	const hint = `: give a squashfs system image, "auto" to build the payload, or "none" for the placeholder`
	if path == "" {
		return "", errors.New("--system is empty" + hint)
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("--system %s: no such file%s", path, hint)
	}
	if err != nil {
		return "", fmt.Errorf("--system: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("--system %s: not a regular file%s", path, hint)
	}
	magic := make([]byte, len(squashfsMagic))
	if _, err := io.ReadFull(f, magic); err != nil || !bytes.Equal(magic, squashfsMagic) {
		return "", fmt.Errorf("--system %s: not a squashfs image%s", path, hint)
	}
	return filepath.Abs(path)
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
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if c.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	r, err := image.LoadRecipe(c.recipe)
	if err != nil {
		return err
	}
	opts := image.Options{Recipe: r, OutDir: c.out, Initagent: c.initagent, KernelCache: c.kernelCache, CABundle: c.caBundle,
		Config: c.config, Progress: stdout, Log: log}
	if c.initagent == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		if opts.SourceDir, err = image.FindSourceDir(wd); err != nil {
			return fmt.Errorf("%w: run imgbuild inside the ballast checkout, or pass --initagent", err)
		}
	}
	if opts.SystemImage, err = c.systemImage(ctx, r, stdout, stderr, log); err != nil {
		return err
	}
	_, err = image.Build(ctx, opts)
	return err
}

// systemImage returns the path for image.Options.SystemImage: "" for the
// placeholder, the given file, or the payload's system image for the
// recipe's role, built unless cached.
func (c *cli) systemImage(ctx context.Context, r *image.Recipe, stdout, stderr io.Writer, log *slog.Logger) (string, error) {
	switch c.system {
	case systemNone:
		return "", nil
	case systemAuto:
	default:
		return c.system, nil
	}
	b := &payload.Builder{CacheDir: c.payloadCache, Log: log.With("part", "payload")}
	if c.verbose {
		b.Stderr = stderr
	}
	log.Info("system image: taking the payload from its cache or building it (a cold build takes 15+ minutes; -v shows the go command)",
		"role", r.Role, "cache", c.payloadCacheDir())
	var path string
	err := image.NewProgress(stdout, 1).Stage("payload", func() (string, error) {
		var err error
		if path, err = b.System(ctx, r.Role); err != nil {
			return "", err
		}
		fi, err := os.Stat(path)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s, %.1f MiB", path, float64(fi.Size())/(1<<20)), nil
	})
	if err != nil {
		return "", fmt.Errorf("--system auto: payload for role %s: %w (pass --system none for a placeholder system image)", r.Role, err)
	}
	return path, nil
}

func (c *cli) payloadCacheDir() string {
	if c.payloadCache != "" {
		return c.payloadCache
	}
	dir, err := payload.DefaultCacheDir()
	if err != nil {
		return "?"
	}
	return dir
}
