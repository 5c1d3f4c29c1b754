package vmimage

import "slices"

// Paths of the binaries inside the guest.
const (
	// GuestAgentPath is the agent: the kernel runs /init as PID 1 and the
	// agent does the init work (mounts, devices) itself.
	GuestAgentPath = "/init"
	// GuestRuncPath is where the agent finds runc.
	GuestRuncPath = "/usr/bin/runc"
	// GuestMke2fsPath is the mke2fs the agent makes the file system of the
	// pod's encrypted scratch disk (emptyDir volumes) with.
	GuestMke2fsPath = "/usr/sbin/mke2fs"
)

// guestEntries is the whole root file system, initramfs or root disk: the
// directories the agent mounts on or writes to (on a root disk, which is
// read-only, it mounts tmpfs on /run and /tmp, where it keeps its state), the two device nodes the kernel needs before anything mounts
// devtmpfs (it opens /dev/console for PID 1's stdio), the agent, runc and
// the few files in /etc that Go and runc read; mke2fs if given.
func guestEntries(agent, runc, mke2fs string) []Entry {
	dir := func(name string, perm uint32) Entry { return Entry{Name: name, Mode: ModeDir | perm} }
	file := func(name, content string) Entry {
		return Entry{Name: name, Mode: ModeRegular | 0o644, Data: []byte(content)}
	}
	entries := []Entry{
		dir("dev", 0o755),
		{Name: "dev/console", Mode: ModeChar | 0o600, Major: 5, Minor: 1},
		{Name: "dev/null", Mode: ModeChar | 0o666, Major: 1, Minor: 3},
		dir("etc", 0o755),
		file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
		file("etc/hostname", "contrast\n"),
		file("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
		file("etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"),
		{Name: GuestAgentPath[1:], Mode: ModeRegular | 0o755, Source: agent},
		dir("mnt", 0o755),
		dir("proc", 0o555),
		dir("root", 0o700),
		dir("run", 0o755),
		dir("sbin", 0o755),
		dir("sys", 0o555),
		dir("tmp", 0o1777),
		dir("usr", 0o755),
		dir("usr/bin", 0o755),
		{Name: GuestRuncPath[1:], Mode: ModeRegular | 0o755, Source: runc},
		dir("usr/sbin", 0o755),
		dir("var", 0o755),
		dir("var/lib", 0o755),
		dir("var/tmp", 0o1777),
	}
	if mke2fs != "" {
		// after usr/sbin, keeping the archive in name order
		i := slices.IndexFunc(entries, func(e Entry) bool { return e.Name == "usr/sbin" })
		entries = slices.Insert(entries, i+1, Entry{Name: GuestMke2fsPath[1:], Mode: ModeRegular | 0o755, Source: mke2fs})
	}
	return entries
}
