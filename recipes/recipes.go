// Package recipes holds the recipes embedded into imgbuild.
package recipes

import (
	"embed"
	"io/fs"
	"sort"
	"strings"
)

//go:embed *.yaml
var files embed.FS

// FS returns the embedded recipe files, one NAME.yaml each.
func FS() fs.FS { return files }

// Names lists the embedded recipes, sorted.
func Names() []string {
	entries, _ := fs.ReadDir(files, ".")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(names)
	return names
}
