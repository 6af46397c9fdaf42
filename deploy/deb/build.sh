#!/bin/sh
# Builds keel's Debian package from a built binary, with dpkg-deb (Debian's
# own packer): the binary, the systemd units, the example configurations
# (as conffiles under /etc/keel, an administrator's edits kept on upgrade),
# the default policy, the alerting rules and the Grafana dashboard.
#
#   sh deploy/deb/build.sh [BINARY] [OUT_DIR]
#
# BINARY defaults to target/release/keel (`cargo build --release -p
# keel-cli`), OUT_DIR to target/deb. Prints the package's path.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/release/keel}
out=${2:-$root/target/deb}
[ -x "$bin" ] || { echo "no keel binary at $bin (cargo build --release -p keel-cli)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "dpkg-deb not found (apt-get install dpkg)" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/keel
install -D -m 0755 "$bin" "$pkg/usr/bin/keel"
# Debug symbols stay out of the package where binutils is at hand.
if command -v strip >/dev/null; then strip --strip-debug "$pkg/usr/bin/keel"; fi
for u in "$root"/deploy/systemd/*.service; do
    install -D -m 0644 "$u" "$pkg/lib/systemd/system/$(basename "$u")"
done
for c in controller correlator executor sensor; do
    install -D -m 0644 "$root/deploy/$c.toml" "$pkg/etc/keel/$c.toml"
done
install -D -m 0644 "$root/deploy/policies/default.toml" "$pkg/etc/keel/policies/default.toml"
install -D -m 0644 "$root/deploy/prometheus/keel.rules.yml" "$pkg/usr/share/keel/prometheus/keel.rules.yml"
install -D -m 0644 "$root/deploy/grafana/keel.json" "$pkg/usr/share/keel/grafana/keel.json"
install -D -m 0644 "$root/deploy/systemd/README.md" "$pkg/usr/share/doc/keel/systemd.md"
install -D -m 0644 "$root/README.md" "$pkg/usr/share/doc/keel/README.md"
install -d -m 0755 "$pkg/DEBIAN"
(cd "$pkg" && find etc -type f | sed 's|^|/|' | sort) > "$pkg/DEBIAN/conffiles"
size=$(du -sk "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: keel
Version: $version
Architecture: $arch
Maintainer: keel <keel@localhost>
Installed-Size: $size
Depends: libc6
Recommends: systemd
Suggests: haproxy, slurm-client, ethtool, iproute2, prometheus
Section: admin
Priority: optional
Description: finds and acts on skews in LLM inference on GPU clusters
 keel watches GPU clusters from the network side and from the exporters
 they already run, finds stragglers, saturated PCIe links, NIC backlogs,
 engine overloads and GPU squatters within about a second, names their
 cause (host, PCIe bus, network, GPU, engine, load), and carries out
 policy-chosen mitigations through the router, the node and Slurm.
CONTROL
# Units are installed, not enabled: each role runs where the operator says.
cat > "$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
POSTINST
chmod 0755 "$pkg/DEBIAN/postinst"
mkdir -p "$out"
deb=$out/keel_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$pkg" "$deb" >/dev/null
echo "$deb"
