package generate

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/user"
	corev1 "k8s.io/api/core/v1"

	"github.com/contrast-vm/contrast/policy"
)

// processUser follows how a container's user is chosen:
//
//   - kubelet: runAsUser/runAsGroup of the container, else of the pod; with
//     no runAsUser, the image's USER up to the colon, as a uid when numeric
//     and as a user name otherwise (the image's group is dropped);
//     supplementalGroups and fsGroup of the pod.
//   - containerd (CRI): "uid:gid" is taken as is; a lone uid takes its group
//     from the image's /etc/passwd (0 when the uid is not there); a user name
//     must be in /etc/passwd. The supplementary groups are the primary group,
//     the groups /etc/group lists the user's name in (unless the pod's
//     supplementalGroupsPolicy is Strict) and the kubelet's groups.
//
// etcPasswd and etcGroup are nil when the image has no such file.
func processUser(container string, pod *corev1.PodSecurityContext, sc *corev1.SecurityContext, imageUser string, etcPasswd, etcGroup []byte) (*policy.User, error) {
	var runAsUser, runAsGroup *int64
	if pod != nil {
		runAsUser, runAsGroup = pod.RunAsUser, pod.RunAsGroup
	}
	if sc != nil {
		if sc.RunAsUser != nil {
			runAsUser = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			runAsGroup = sc.RunAsGroup
		}
	}

	var uid, gid uint32
	var username string
	switch {
	case runAsUser != nil:
		id, err := checkID("runAsUser", *runAsUser)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", container, err)
		}
		uid = id
	case imageUser != "":
		name, _, _ := strings.Cut(imageUser, ":")
		if id, err := strconv.ParseInt(name, 10, 64); err == nil {
			if uid, err = checkID("the image's USER", id); err != nil {
				return nil, fmt.Errorf("container %s: %w", container, err)
			}
		} else {
			username = name
		}
	}

	users, err := parsePasswd(etcPasswd)
	if err != nil {
		return nil, fmt.Errorf("container %s: the image's /etc/passwd: %w", container, err)
	}
	var entry *user.User
	if username != "" {
		i := slices.IndexFunc(users, func(u user.User) bool { return u.Name == username })
		if i < 0 {
			return nil, fmt.Errorf("container %s: the image's USER %q is not in its /etc/passwd, so containerd cannot start it", container, username)
		}
		entry = &users[i]
		uid = uint32(entry.Uid)
	} else if i := slices.IndexFunc(users, func(u user.User) bool { return u.Uid == int(uid) }); i >= 0 {
		entry = &users[i]
	}
	// With no user at all, containerd keeps the OCI default 0:0 without
	// looking at /etc/passwd.
	noUser := runAsUser == nil && imageUser == ""
	switch {
	case runAsGroup != nil && noUser:
		return nil, fmt.Errorf("container %s: runAsGroup is set without runAsUser and the image names no user; containerd refuses a group without a user", container)
	case runAsGroup != nil:
		if gid, err = checkID("runAsGroup", *runAsGroup); err != nil {
			return nil, fmt.Errorf("container %s: %w", container, err)
		}
	case entry != nil && !noUser:
		gid = uint32(entry.Gid)
	}

	groups := []uint32{gid}
	strict := pod != nil && pod.SupplementalGroupsPolicy != nil && *pod.SupplementalGroupsPolicy == corev1.SupplementalGroupsPolicyStrict
	if !strict && entry != nil && etcGroup != nil {
		listed, err := user.ParseGroupFilter(bytes.NewReader(etcGroup), func(g user.Group) bool {
			return g.Name != entry.Name && slices.Contains(g.List, entry.Name)
		})
		if err != nil {
			return nil, fmt.Errorf("container %s: the image's /etc/group: %w", container, err)
		}
		for _, g := range listed {
			groups = append(groups, uint32(g.Gid))
		}
	}
	if pod != nil {
		for _, g := range pod.SupplementalGroups {
			id, err := checkID("supplementalGroups", g)
			if err != nil {
				return nil, fmt.Errorf("container %s: %w", container, err)
			}
			groups = append(groups, id)
		}
		if pod.FSGroup != nil {
			id, err := checkID("fsGroup", *pod.FSGroup)
			if err != nil {
				return nil, fmt.Errorf("container %s: %w", container, err)
			}
			groups = append(groups, id)
		}
	}
	slices.Sort(groups)
	return &policy.User{UID: uid, GID: gid, AdditionalGIDs: slices.Compact(groups)}, nil
}

func parsePasswd(etcPasswd []byte) ([]user.User, error) {
	if etcPasswd == nil {
		return nil, nil
	}
	return user.ParsePasswdFilter(bytes.NewReader(etcPasswd), nil)
}

// checkID checks an id against runc's limit, which containerd keeps too.
func checkID(what string, id int64) (uint32, error) {
	if id < 0 || id > 1<<31-1 {
		return 0, fmt.Errorf("%s %d is out of range (0 to 2147483647)", what, id)
	}
	return uint32(id), nil
}
