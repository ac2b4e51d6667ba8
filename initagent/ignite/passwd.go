package ignite

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	igntypes "github.com/coreos/ignition/v2/config/v3_5/types"
)

// passwdPlan holds the new /etc/passwd, /etc/group, /etc/shadow and the
// authorized_keys files, computed before anything is written, and the
// users and groups by name for the storage entries' owners.
type passwdPlan struct {
	ops    []op
	users  map[string][2]int // name → uid, primary gid
	groups map[string]int
}

// owner resolves a node's user and group (id or name) to numbers.
func (p *passwdPlan) owner(field string, n igntypes.Node) (uid, gid int, err error) {
	switch {
	case n.User.ID != nil:
		uid = *n.User.ID
	case n.User.Name != nil && *n.User.Name != "":
		u, ok := p.users[*n.User.Name]
		if !ok {
			return 0, 0, fmt.Errorf("%s.user.name: no user %q on the node: declare it in passwd.users", field, *n.User.Name)
		}
		uid = u[0]
	}
	switch {
	case n.Group.ID != nil:
		gid = *n.Group.ID
	case n.Group.Name != nil && *n.Group.Name != "":
		g, ok := p.groups[*n.Group.Name]
		if !ok {
			return 0, 0, fmt.Errorf("%s.group.name: no group %q on the node: declare it in passwd.groups", field, *n.Group.Name)
		}
		gid = g
	}
	return uid, gid, nil
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
	plan := &passwdPlan{users: map[string][2]int{}, groups: map[string]int{}}
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
	if len(p.Users) == 0 && len(p.Groups) == 0 {
		plan.index(passwd, group)
		return plan, nil
	}
	if len(passwd) == 0 {
		// what the runtime writes when there is no /etc/passwd
		passwd = []entry{{"root", "x", "0", "0", "root", "/root", "/sbin/nologin"}, {"nobody", "x", "65534", "65534", "nobody", "/nonexistent", "/sbin/nologin"}}
		group = upsert(upsert(group, entry{"root", "x", "0", ""}), entry{"nobody", "x", "65534", ""})
		shadow = upsert(shadow, entry{"root", "*", "", "", "", "", "", "", ""})
	}
	var errs []string
	for _, g := range p.Groups {
		gid := nextID(group, 2, 1000)
		if g.Gid != nil {
			gid = *g.Gid
		}
		group = upsert(group, entry{g.Name, "x", strconv.Itoa(gid), ""})
	}
	for i, u := range p.Users {
		field := fmt.Sprintf("ignition.passwd.users[%d]", i)
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
		dest, _, msg := place(home)
		if msg != "" {
			errs = append(errs, fmt.Sprintf("%s.homeDir: %s", field, msg))
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
			found := false
			for i := range group {
				if group[i][0] == string(sg) && len(group[i]) > 3 {
					members := strings.Split(group[i][3], ",")
					if group[i][3] == "" {
						members = nil
					}
					group[i][3] = strings.Join(append(members, u.Name), ",")
					found = true
				}
			}
			if !found {
				errs = append(errs, fmt.Sprintf("%s.groups: group %q does not exist: declare it in passwd.groups", field, sg))
			}
		}
		if len(u.SSHAuthorizedKeys) > 0 {
			var keys []string
			for _, k := range u.SSHAuthorizedKeys {
				keys = append(keys, string(k))
			}
			ssh := path.Join(dest, ".ssh")
			plan.ops = append(plan.ops,
				op{Kind: "dir", Path: ssh, Field: field + ".sshAuthorizedKeys", Mode: 0o700, UID: uid, GID: gid},
				op{Kind: "file", Path: path.Join(ssh, "authorized_keys"), Field: field + ".sshAuthorizedKeys", Contents: true,
					Data: []byte(strings.Join(keys, "\n") + "\n"), Mode: 0o600, UID: uid, GID: gid, Over: true})
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	plan.index(passwd, group)
	for _, f := range []struct {
		name string
		es   []entry
		mode os.FileMode
	}{{"/etc/passwd", passwd, 0o644}, {"/etc/group", group, 0o644}, {"/etc/shadow", shadow, 0o600}} {
		plan.ops = append(plan.ops, op{Kind: "file", Path: f.name, Field: "ignition.passwd", Contents: true, Data: render(f.es), Mode: f.mode, Over: true})
	}
	return plan, nil
}

func (p *passwdPlan) index(passwd, group []entry) {
	for _, e := range passwd {
		if len(e) > 3 {
			uid, err1 := strconv.Atoi(e[2])
			gid, err2 := strconv.Atoi(e[3])
			if err1 == nil && err2 == nil {
				p.users[e[0]] = [2]int{uid, gid}
			}
		}
	}
	for _, e := range group {
		if len(e) > 2 {
			if gid, err := strconv.Atoi(e[2]); err == nil {
				p.groups[e[0]] = gid
			}
		}
	}
}
