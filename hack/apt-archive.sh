# Sourced by hack/deps.sh and hack/ovmf.sh: what they share for reaching the
# Debian archive the machine already uses, without naming a mirror.

# apt_install_missing PKG...: installs those of the packages that are not
# installed yet (the caller defines log).
apt_install_missing() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# debian_archive prints the URI and keyring ("-" for none) of the Debian
# archive the machine's apt sources already use for its own release, so
# that backports come from the same mirror. Never name a mirror here.
debian_archive() {
  local codename=$1
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    # deb822: stanzas separated by blank lines.
    awk -v want="$codename" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uri != "") {
          print uri, (key == "" ? "-" : key); found = 1; exit
        }
        types = suites = uri = key = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^#/ { next }
      tolower($1) == "types:" { $1 = ""; types = substr($0, 2) }
      tolower($1) == "suites:" { $1 = ""; suites = substr($0, 2) }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "signed-by:" { key = $2 }
      END { if (!found) flush() }
    ' "$f" | head -n1
  done
  if [ -r /etc/apt/sources.list ]; then
    # one-line format: deb [options] URI suite components
    awk -v want="$codename" '
      $1 == "deb" {
        i = 2; key = "-"
        if ($2 ~ /^\[/) {
          for (; i <= NF; i++) {
            if ($i ~ /^\[?signed-by=/) { key = $i; sub(/^\[?signed-by=/, "", key); sub(/\]$/, "", key) }
            if ($i ~ /\]$/) { i++; break }
          }
        }
        if ($(i + 1) == want) { print $i, key; exit }
      }' /etc/apt/sources.list
  fi
}

# private_apt DIR: prints apt options that keep apt's sources, lists and
# cache under DIR, so the machine's own apt state stays as it is. The
# sources go into DIR/sources/*.sources.
private_apt() {
  local dir=$1
  mkdir -p "$dir/sources" "$dir/lists/partial" "$dir/cache/archives/partial"
  printf '%s\n' -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$dir/sources" \
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o APT::Sandbox::User=root -q
}
