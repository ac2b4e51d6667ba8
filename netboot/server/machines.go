package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/template"

	"gopkg.in/yaml.v3"
)

// GroupsFile is the file in the machines directory that lists known
// machines (with hostnames and labels) and the groups that give a template
// to every machine their selector matches.
const GroupsFile = "groups.yaml"

// Groups is GroupsFile's content.
//
//	machines:
//	  - {mac: "52:54:00:00:00:21", hostname: cp-1, labels: {role: control-plane}}
//	groups:
//	  - name: control-plane
//	    selector: {labels: {role: control-plane}}   # or macs: ["52:54:00:00:00:2*"], uuids: [...]
//	    template: control-plane.yaml.tmpl
//	    labels: {pool: cp}
type Groups struct {
	Machines []MachineEntry `yaml:"machines"`
	Groups   []Group        `yaml:"groups"`
}

// MachineEntry states facts about one machine, found by MAC or UUID.
type MachineEntry struct {
	MAC      string            `yaml:"mac"`
	UUID     string            `yaml:"uuid"`
	Hostname string            `yaml:"hostname"`
	Labels   map[string]string `yaml:"labels"`
}

// Group gives Template to every machine Selector matches; the first
// matching group wins.
type Group struct {
	Name     string            `yaml:"name"`
	Selector Selector          `yaml:"selector"`
	Template string            `yaml:"template"` // file in the machines directory
	Labels   map[string]string `yaml:"labels"`   // added to the machine's labels
}

// Selector matches machines. Every field that is set must match; an empty
// selector matches every machine (a default group, put it last).
type Selector struct {
	MACs   []string          `yaml:"macs"`   // path.Match globs on the lowercase aa:bb:… form
	UUIDs  []string          `yaml:"uuids"`  // lowercase, exact
	Labels map[string]string `yaml:"labels"` // all must be on the machine
}

// Machine is what a config template sees.
type Machine struct {
	MAC       string // 52:54:00:00:00:21
	MACHyphen string // 52-54-00-00-00-21, iPXE's ${mac:hexhyp}
	UUID      string // lowercase, empty when the client sent none
	Hostname  string
	Labels    map[string]string
	Group     string // the matching group's name, empty for a per-machine file
	IP        string // the address the server saw for the MAC in DHCP, if any
}

// Rendered is a machine's config.
type Rendered struct {
	Data    []byte
	Source  string // the file it was rendered from, relative to the machines directory
	Machine Machine
}

var errNoConfig = errors.New("no config for this machine")

// machines reads the machines directory afresh on every lookup, so edits
// apply without a restart; the directory is small.
type machines struct{ dir string }

func (m machines) loadGroups() (*Groups, error) {
	data, err := os.ReadFile(filepath.Join(m.dir, GroupsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &Groups{}, nil
	}
	if err != nil {
		return nil, err
	}
	var g Groups
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&g); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w (fields: machines[].{mac,uuid,hostname,labels}, groups[].{name,selector{macs,uuids,labels},template,labels})", GroupsFile, err)
	}
	for i, e := range g.Machines {
		if e.MAC == "" && e.UUID == "" {
			return nil, fmt.Errorf("%s: machines[%d]: set mac or uuid to say which machine this is", GroupsFile, i)
		}
		if e.MAC != "" {
			hw, err := net.ParseMAC(e.MAC)
			if err != nil || len(hw) != 6 {
				return nil, fmt.Errorf("%s: machines[%d].mac %q is not a MAC address: write it as 52:54:00:12:34:56", GroupsFile, i, e.MAC)
			}
			g.Machines[i].MAC = hw.String()
		}
		g.Machines[i].UUID = strings.ToLower(e.UUID)
	}
	for i, gr := range g.Groups {
		if gr.Template == "" {
			return nil, fmt.Errorf("%s: groups[%d] (%s): template is empty: name a template file in %s", GroupsFile, i, gr.Name, m.dir)
		}
		if !fs.ValidPath(gr.Template) {
			return nil, fmt.Errorf("%s: groups[%d].template %q must be a file name inside the machines directory", GroupsFile, i, gr.Template)
		}
		for _, p := range gr.Selector.MACs {
			if _, err := path.Match(p, ""); err != nil {
				return nil, fmt.Errorf("%s: groups[%d].selector.macs: %q is not a valid glob: %v", GroupsFile, i, p, err)
			}
		}
	}
	return &g, nil
}

// Render finds and renders the config of the machine with mac (and uuid,
// may be empty): machines/<mac>.yaml (aa:bb:… or aa-bb-… form), then
// machines/<uuid>.yaml, then the first group whose selector matches.
func (m machines) Render(mac net.HardwareAddr, uuid, ip string) (*Rendered, error) {
	g, err := m.loadGroups()
	if err != nil {
		return nil, err
	}
	uuid = strings.ToLower(uuid)
	mach := Machine{MAC: mac.String(), MACHyphen: strings.ReplaceAll(mac.String(), ":", "-"), UUID: uuid, IP: ip, Labels: map[string]string{}}
	for _, e := range g.Machines {
		if (e.MAC != "" && e.MAC == mach.MAC) || (e.UUID != "" && e.UUID == uuid) {
			mach.Hostname = e.Hostname
			maps.Copy(mach.Labels, e.Labels)
			break
		}
	}
	candidates := []string{mach.MAC + ".yaml", mach.MACHyphen + ".yaml"}
	if uuid != "" && fs.ValidPath(uuid+".yaml") && !strings.ContainsAny(uuid, `/\`) {
		candidates = append(candidates, uuid+".yaml")
	}
	for _, name := range candidates {
		if _, err := os.Stat(filepath.Join(m.dir, name)); err == nil {
			return m.render(name, mach)
		}
	}
	for _, gr := range g.Groups {
		if gr.Selector.matches(mach) {
			mach.Group = gr.Name
			for k, v := range gr.Labels {
				if _, ok := mach.Labels[k]; !ok {
					mach.Labels[k] = v
				}
			}
			return m.render(gr.Template, mach)
		}
	}
	return nil, errNoConfig
}

func (s Selector) matches(m Machine) bool {
	if len(s.MACs) > 0 && !anyMatch(s.MACs, func(p string) bool { ok, _ := path.Match(strings.ToLower(p), m.MAC); return ok }) {
		return false
	}
	if len(s.UUIDs) > 0 && !anyMatch(s.UUIDs, func(u string) bool { return m.UUID != "" && strings.ToLower(u) == m.UUID }) {
		return false
	}
	for k, v := range s.Labels {
		if m.Labels[k] != v {
			return false
		}
	}
	return true
}

func anyMatch(xs []string, f func(string) bool) bool {
	for _, x := range xs {
		if f(x) {
			return true
		}
	}
	return false
}

func (m machines) render(name string, mach Machine) (*Rendered, error) {
	src, err := os.ReadFile(filepath.Join(m.dir, name))
	if err != nil {
		return nil, err
	}
	t, err := template.New(name).Option("missingkey=error").Parse(string(src))
	if err != nil {
		return nil, fmt.Errorf("machine config template %s: %w", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, mach); err != nil {
		return nil, fmt.Errorf("machine config template %s for %s: %w (fields: .MAC .MACHyphen .UUID .Hostname .Labels .Group .IP)", name, mach.MAC, err)
	}
	return &Rendered{Data: b.Bytes(), Source: name, Machine: mach}, nil
}
