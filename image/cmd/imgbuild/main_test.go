package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/image/disk"
)

func smallSquashFS(t *testing.T) string {
	t.Helper()
	tree := t.TempDir()
	if err := os.WriteFile(filepath.Join(tree, "hello"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "small.sqfs")
	if err := disk.SquashFS(context.Background(), tree, out); err != nil {
		t.Skipf("cannot make a squashfs: %v", err)
	}
	return out
}

func TestSystemFlag(t *testing.T) {
	sqfs := smallSquashFS(t)
	notSquash := filepath.Join(t.TempDir(), "not.sqfs")
	if err := os.WriteFile(notSquash, []byte("plain text, no squashfs"), 0o644); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(mustWd(t), sqfs)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		system  string // want c.system
		wantErr []string
	}{
		{"default is auto", nil, systemAuto, nil},
		{"none", []string{"--system", "none"}, systemNone, nil},
		{"auto with a cache", []string{"--system", "auto", "--payload-cache", "/tmp/pc"}, systemAuto, nil},
		{"path", []string{"--system", sqfs}, sqfs, nil},
		{"relative path made absolute", []string{"--system", rel}, sqfs, nil},
		{"missing file", []string{"--system", "/nonexistent/system.sqfs"}, "", []string{"/nonexistent/system.sqfs", "no such file", `"auto"`, `"none"`}},
		{"directory", []string{"--system", t.TempDir()}, "", []string{"not a regular file"}},
		{"not squashfs", []string{"--system", notSquash}, "", []string{notSquash, "not a squashfs image"}},
		{"empty", []string{"--system", ""}, "", []string{"--system is empty"}},
		{"cache without auto", []string{"--system", "none", "--payload-cache", "/tmp/pc"}, "", []string{"--payload-cache is only used with --system auto"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseFlags(append([]string{"--recipe", "control-plane"}, tc.args...), io.Discard)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("accepted %v", tc.args)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %s", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.system != tc.system {
				t.Errorf("system %q, want %q", c.system, tc.system)
			}
		})
	}
}

// TestSystemImageWithoutPayload: none and PATH never touch the payload
// builder (an empty cache directory stays empty).
func TestSystemImageWithoutPayload(t *testing.T) {
	sqfs := smallSquashFS(t)
	r, err := image.LoadRecipe("worker")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	for arg, want := range map[string]string{"none": "", sqfs: sqfs} {
		c, err := parseFlags([]string{"--recipe", "worker", "--system", arg}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.systemImage(context.Background(), r, io.Discard, io.Discard, log)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("--system %s gives SystemImage %q, want %q", arg, got, want)
		}
	}
}

// TestRunRejectsBadSystemBeforeBuilding: the error comes before any stage runs.
func TestRunRejectsBadSystemBeforeBuilding(t *testing.T) {
	out := t.TempDir()
	var stdout strings.Builder
	err := run(context.Background(), []string{"--recipe", "worker", "--out", out, "--system", "/nonexistent.sqfs"}, &stdout, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("err %v, want a missing --system file", err)
	}
	if stdout.Len() != 0 {
		t.Errorf("stages ran before the flag was checked:\n%s", stdout.String())
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("output directory is not empty: %v", entries)
	}
}

func mustWd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}
