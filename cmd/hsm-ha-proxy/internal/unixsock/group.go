package unixsock

import (
	"fmt"
	"os/user"
	"strconv"
)

// ForGroup is the socket permissions of a door whose config names a group (server.listen_group,
// server.pkcs11_group): none, mode 0600 (the process's user only); a group name or numeric gid, mode 0660
// owned by that group, so that applications running as other users in it can connect (and are then told
// apart by SO_PEERCRED).
func ForGroup(group string) (Options, error) {
	if group == "" {
		return Options{Mode: 0o600, GID: NoGroup}, nil
	}
	gid, err := lookupGroup(group)
	if err != nil {
		return Options{}, err
	}
	return Options{Mode: 0o660, GID: gid}, nil
}

// lookupGroup resolves a group: a numeric gid as it is, else a group name.
func lookupGroup(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("group %q: gid %q: %w", group, g.Gid, err)
	}
	return gid, nil
}
