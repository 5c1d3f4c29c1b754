package installer

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestUninstallRemovesItsAliases: an uninstall that does not name the
// alias still removes it when it points at the removed handler (the
// drop-ins record it), and keeps it when it points at another.
func TestUninstallRemovesItsAliases(t *testing.T) {
	for _, tc := range []struct{ name, main, aliasDropIn string }{
		{"v3", testMainV3, "etc/containerd/conf.d/contrast-contrast.toml"},
		{"v2", testMainV2, "etc/containerd/conf.d/contrast.toml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			h := newTestHost(t, tc.main)
			before := snapshot(t, h.root)
			first := h.opts(writePayload(t, "shim v1"))
			first.Alias = "contrast"
			a, err := Install(ctx, first)
			if err != nil {
				t.Fatal(err)
			}
			noAlias := h.opts("")
			un, err := Uninstall(ctx, noAlias, a.Handler)
			if err != nil {
				t.Fatal(err)
			}
			if un.Alias != "contrast" {
				t.Errorf("uninstall reports alias %q, want contrast", un.Alias)
			}
			if _, err := os.Stat(filepath.Join(h.root, tc.aliasDropIn)); !os.IsNotExist(err) {
				t.Errorf("alias drop-in after uninstall: %v", err)
			}
			if d := diffSnapshots(before, snapshotAfterUninstall(t, h.root)); d != "" {
				t.Errorf("uninstall without --alias did not restore the host: %s", d)
			}

			// The alias moves to a newer handler: uninstalling the older
			// one leaves it.
			if a, err = Install(ctx, first); err != nil {
				t.Fatal(err)
			}
			second := h.opts(writePayload(t, "shim v2"))
			second.Alias = "contrast"
			b, err := Install(ctx, second)
			if err != nil {
				t.Fatal(err)
			}
			if un, err = Uninstall(ctx, first, a.Handler); err != nil {
				t.Fatal(err)
			}
			if un.Alias != "" {
				t.Errorf("uninstall of %s removed alias %q, which points at %s", a.Handler, un.Alias, b.Handler)
			}
			st, err := Status(noAlias)
			if err != nil {
				t.Fatal(err)
			}
			if len(st) != 1 || st[0].Handler != b.Handler || !st[0].Imported || !slices.Equal(st[0].Aliases, []string{"contrast"}) {
				t.Errorf("status after uninstalling %s: %+v, want %s with its alias", a.Handler, st, b.Handler)
			}
		})
	}
}
