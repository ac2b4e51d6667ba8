package config

import (
	"fmt"
	"strings"

	"github.com/ballast-os/ballast/initagent/ignite"
	ignerrors "github.com/coreos/ignition/v2/config/shared/errors"
	v3 "github.com/coreos/ignition/v2/config/v3_5"
	igntypes "github.com/coreos/ignition/v2/config/v3_5/types"
	"github.com/coreos/vcontext/report"
)

// IgnitionConfig returns the parsed ignition section (any v3.0–v3.5 config,
// translated to v3.5), or nil when there is none.
func (c *MachineConfig) IgnitionConfig() (*igntypes.Config, error) {
	if c.ignitionJSON == nil {
		return nil, nil
	}
	cfg, _, err := parseIgnition(c.ignitionJSON)
	return cfg, err
}

func parseIgnition(raw []byte) (*igntypes.Config, report.Report, error) {
	cfg, rpt, err := v3.ParseCompatibleVersion(raw)
	if err != nil {
		if err == ignerrors.ErrUnknownVersion {
			return nil, rpt, fmt.Errorf("%w: this agent reads Ignition spec 3.0 to %s", err, igntypes.MaxVersion)
		}
		return nil, rpt, err
	}
	return &cfg, rpt, nil
}

// ignition validates the section; unused-key warnings are errors, since a
// misspelt key in a file list silently drops the file. What the node would
// refuse when it applies the section (ignite.Check: disks, systemd units,
// kernel arguments, paths outside the writable trees or managed by ballast,
// unsupported sources) is refused here, so imgbuild --config, nodectl apply
// and netbootd refuse it too. Configs referenced by ignition.config.merge
// and replace are fetched and checked on the node only.
func (v *validator) ignition() {
	if v.cfg.ignitionJSON == nil {
		return
	}
	cfg, rpt, err := parseIgnition(v.cfg.ignitionJSON)
	if cfg != nil {
		for _, p := range ignite.Check("ignition", cfg) {
			v.fail(p.Field, "%s", p.Msg)
		}
	}
	for _, e := range rpt.Entries {
		if e.Kind == report.Error || e.Kind == report.Warn {
			path := "ignition" + ignitionPath(e.Context.Path)
			v.fail(path, "%s", e.Message)
		}
	}
	if err != nil && len(rpt.Entries) == 0 {
		v.fail("ignition", "%v", err)
	}
}

// ignitionPath writes a vcontext path the way the rest of the config's
// field paths are written: .storage.files[1].path.
func ignitionPath(p []interface{}) string {
	var b strings.Builder
	for _, e := range p {
		switch e := e.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", e)
		default:
			fmt.Fprintf(&b, ".%v", e)
		}
	}
	return b.String()
}
