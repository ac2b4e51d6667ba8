package config

import (
	"fmt"

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
// misspelt key in a file list silently drops the file.
func (v *validator) ignition() {
	if v.cfg.ignitionJSON == nil {
		return
	}
	_, rpt, err := parseIgnition(v.cfg.ignitionJSON)
	for _, e := range rpt.Entries {
		if e.Kind == report.Error || e.Kind == report.Warn {
			path := "ignition"
			if s := e.Context.String(); s != "" && s != "$" {
				path += trimDollar(s)
			}
			v.fail(path, "%s", e.Message)
		}
	}
	if err != nil && len(rpt.Entries) == 0 {
		v.fail("ignition", "%v", err)
	}
}

func trimDollar(s string) string {
	if len(s) > 0 && s[0] == '$' {
		return s[1:]
	}
	return "." + s
}
