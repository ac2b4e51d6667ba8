package ignite

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	igntypes "github.com/coreos/ignition/v2/config/v3_5/types"
)

// passwdPlan holds the new /etc/passwd, /etc/group, /etc/shadow and the
// authorized_keys files, computed before anything is written.
type passwdPlan struct {
	root    string
	files   map[string][]byte // path under root → content
	modes   map[string]os.FileMode
	owners  map[string][2]int
	changed bool
}

type entry []string // colon-separated fields

func readEntries(root, name string) ([]entry, error) {
	data, err := os.ReadFile(filepath.Join(root, name))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var es []entry
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if l != "" {
			es = append(es, strings.Split(l, ":"))
		}
	}
	return es, nil
}

func upsert(es []entry, e entry) []entry {
	for i := range es {
		if es[i][0] == e[0] {
			es[i] = e
			return es
		}
	}
	return append(es, e)
}

func render(es []entry) []byte {
	var b strings.Builder
	for _, e := range es {
		b.WriteString(strings.Join(e, ":") + "\n")
	}
	return []byte(b.String())
}

func nextID(es []entry, field, start int) int {
	id := start
	for _, e := range es {
		if len(e) > field {
			if n, err := strconv.Atoi(e[field]); err == nil && n >= id && n < 60000 {
				id = n + 1
			}
		}
	}
	return id
}

func planPasswd(root string, p igntypes.Passwd) (*passwdPlan, error) {
	plan := &passwdPlan{root: root, files: map[string][]byte{}, modes: map[string]os.FileMode{}, owners: map[string][2]int{}}
	if len(p.Users) == 0 && len(p.Groups) == 0 {
		return plan, nil
	}
	passwd, err := readEntries(root, "etc/passwd")
	if err != nil {
		return nil, err
	}
	group, err := readEntries(root, "etc/group")
	if err != nil {
		return nil, err
	}
	shadow, err := readEntries(root, "etc/shadow")
	if err != nil {
		return nil, err
	}
	if len(passwd) == 0 {
		passwd = []entry{{"root", "x", "0", "0", "root", "/root", "/bin/sh"}}
		group = upsert(group, entry{"root", "x", "0", ""})
		shadow = upsert(shadow, entry{"root", "*", "", "", "", "", "", "", ""})
	}
	var errs []string
	for i, g := range p.Groups {
		if g.ShouldExist != nil && !*g.ShouldExist {
			errs = append(errs, fmt.Sprintf("ignition.passwd.groups[%d].shouldExist: removing groups is not supported", i))
			continue
		}
		gid := nextID(group, 2, 1000)
		if g.Gid != nil {
			gid = *g.Gid
		}
		group = upsert(group, entry{g.Name, "x", strconv.Itoa(gid), ""})
	}
	for i, u := range p.Users {
		field := fmt.Sprintf("ignition.passwd.users[%d]", i)
		if u.Name == "" || strings.ContainsAny(u.Name, ":\n/") {
			errs = append(errs, fmt.Sprintf("%s.name: %q is not a user name", field, u.Name))
			continue
		}
		if u.ShouldExist != nil && !*u.ShouldExist {
			errs = append(errs, fmt.Sprintf("%s.shouldExist: removing users is not supported", field))
			continue
		}
		uid := nextID(passwd, 2, 1000)
		if u.UID != nil {
			uid = *u.UID
		}
		home := "/home/" + u.Name
		if u.Name == "root" {
			home = "/root"
		}
		if u.HomeDir != nil {
			home = *u.HomeDir
		}
		if _, err := target(field+".homeDir", home); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		gid := uid
		if u.PrimaryGroup != nil {
			found := false
			for _, g := range group {
				if g[0] == *u.PrimaryGroup && len(g) > 2 {
					gid, _ = strconv.Atoi(g[2])
					found = true
				}
			}
			if !found {
				errs = append(errs, fmt.Sprintf("%s.primaryGroup: group %q does not exist: declare it in passwd.groups", field, *u.PrimaryGroup))
				continue
			}
		} else {
			group = upsert(group, entry{u.Name, "x", strconv.Itoa(gid), ""})
		}
		shell, gecos, hash := "/bin/sh", "", "*"
		if u.Shell != nil {
			shell = *u.Shell
		}
		if u.Gecos != nil {
			gecos = *u.Gecos
		}
		if u.PasswordHash != nil {
			hash = *u.PasswordHash
		}
		passwd = upsert(passwd, entry{u.Name, "x", strconv.Itoa(uid), strconv.Itoa(gid), gecos, home, shell})
		shadow = upsert(shadow, entry{u.Name, hash, "", "", "", "", "", "", ""})
		for _, sg := range u.Groups {
			for i := range group {
				if group[i][0] == string(sg) {
					members := strings.Split(group[i][3], ",")
					if group[i][3] == "" {
						members = nil
					}
					group[i][3] = strings.Join(append(members, u.Name), ",")
				}
			}
		}
		if len(u.SSHAuthorizedKeys) > 0 {
			var keys []string
			for _, k := range u.SSHAuthorizedKeys {
				keys = append(keys, string(k))
			}
			ak := filepath.Join(strings.TrimPrefix(home, "/"), ".ssh", "authorized_keys")
			plan.files[ak] = []byte(strings.Join(keys, "\n") + "\n")
			plan.modes[ak] = 0o600
			plan.owners[ak] = [2]int{uid, gid}
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	plan.files["etc/passwd"], plan.modes["etc/passwd"] = render(passwd), 0o644
	plan.files["etc/group"], plan.modes["etc/group"] = render(group), 0o644
	plan.files["etc/shadow"], plan.modes["etc/shadow"] = render(shadow), 0o600
	plan.changed = true
	return plan, nil
}

func (p *passwdPlan) write() error {
	if p == nil || !p.changed {
		return nil
	}
	for name, data := range p.files {
		path := filepath.Join(p.root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		tmp := path + ".ignite-tmp"
		if err := os.WriteFile(tmp, data, p.modes[name]); err != nil {
			return err
		}
		if o, ok := p.owners[name]; ok {
			if err := os.Lchown(filepath.Dir(path), o[0], o[1]); err != nil {
				return err
			}
			if err := os.Lchown(tmp, o[0], o[1]); err != nil {
				return err
			}
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	return nil
}
