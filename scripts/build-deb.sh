#!/usr/bin/env bash
# Builds the Debian package statsrelay_VERSION_ARCH.deb (Debian 12) from this checkout:
#   release binary (static Swift standard library), the systemd unit, /etc/default/statsrelay and
#   /etc/statsrelay/statsrelay.yaml (conffiles), a man page made from the binary's --help, docs and
#   the keepalived example, and
#   maintainer scripts that create the statsrelay system user and enable the unit.
#
#   scripts/build-deb.sh [--output DIR] [--binary PATH] [--version V]
#
#   --output DIR   where the .deb goes (default .build/deb)
#   --binary PATH  package this statsrelay instead of building one (it must be a release build)
#   --version V    package version (default: what `statsrelay --version` prints)
#
# Environment: DEB_MAINTAINER ("Name <address>", default the author of the last commit),
# SOURCE_DATE_EPOCH (file times and changelog date, default the last commit's time). Needs
# dpkg-dev (dpkg-shlibdeps) and, to build, the Swift toolchain and liburing-dev. Prints the path
# of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

output=.build/deb
binary=""
version=""
while [ $# -gt 0 ]; do
    case "$1" in
        --output) output="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        --version) version="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb.sh: unknown argument '$1' (see --help)" >&2; exit 64 ;;
    esac
done

for tool in dpkg-deb dpkg-shlibdeps gzip strip; do
    command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool is missing (apt-get install dpkg-dev binutils)" >&2; exit 69; }
done

if [ -z "$binary" ]; then
    # README's release build, linked with -z now: with the relocations read-only after start-up
    # (full RELRO), as Debian's hardening flags do. It costs a re-link, not a rebuild.
    build=(swift build -c release --static-swift-stdlib -Xlinker -z -Xlinker now)
    echo "build-deb.sh: ${build[*]}" >&2
    "${build[@]}" >&2
    binary="$("${build[@]}" --show-bin-path)/statsrelay"
fi
[ -x "$binary" ] || { echo "build-deb.sh: no executable at $binary" >&2; exit 66; }

if [ -z "$version" ]; then
    version="$("$binary" --version)"
    version="${version#statsrelay }"
fi
if ! [[ "$version" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then
    echo "build-deb.sh: '$version' is not a Debian version" >&2
    exit 65
fi
arch="$(dpkg --print-architecture)"

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH
maintainer="${DEB_MAINTAINER:-$(git log -1 --format='%an <%ae>' 2>/dev/null || echo 'statsrelay maintainers <root@localhost>')}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
doc="$root/usr/share/doc/statsrelay"

install -d -m 755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/default" "$root/etc/statsrelay" \
    "$doc/examples" "$root/usr/share/man/man1" "$root/usr/share/lintian/overrides"

# As dh_strip does for an executable: no debug sections, symbols or compiler notes (99 MB → ~66,
# most of it Foundation and its ICU data, which Yams brings: docs/configuration.md#why-yams).
# The build ID note stays, so a core dump still matches the unstripped binary of this build.
install -m 755 "$binary" "$root/usr/bin/statsrelay"
strip --remove-section=.comment --remove-section=.note "$root/usr/bin/statsrelay"

install -m 644 deploy/statsrelay.service "$root/lib/systemd/system/statsrelay.service"
install -m 644 deploy/statsrelay.default "$root/etc/default/statsrelay"
install -m 644 deploy/statsrelay.yaml "$root/etc/statsrelay/statsrelay.yaml"
install -m 644 deploy/keepalived.conf.example "$doc/examples/keepalived.conf.example"
install -m 644 deploy/statsrelay.socket "$doc/examples/statsrelay.socket"
install -m 644 deploy/debian/copyright "$doc/copyright"
install -m 644 deploy/debian/lintian-overrides "$root/usr/share/lintian/overrides/statsrelay"
# Policy 12.3: documentation over 4 KiB compressed with gzip -9n (the unit points at the .gz).
install -m 644 README.md "$doc/README.md"
install -m 644 docs/operations.md "$doc/operations.md"
install -m 644 docs/configuration.md "$doc/configuration.md"
gzip -9n "$doc/README.md" "$doc/operations.md" "$doc/configuration.md"

cat >"$work/changelog" <<EOF
statsrelay ($version) unstable; urgency=medium

  * Built from statsrelay commit $commit.

 -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
EOF
gzip -9n -c "$work/changelog" >"$doc/changelog.gz"
chmod 644 "$doc/changelog.gz"

# The man page is the binary's own --help for each command, so it cannot drift from the flags.
roff_block() {
    # Verbatim text in roff: backslashes escaped, hyphens as minus signs, no line read as a request.
    sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
}
{
    echo ".TH STATSRELAY 1 \"$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)\" \"statsrelay $version\" \"User Commands\""
    echo ".SH NAME"
    echo "statsrelay \\- StatsD relay on io_uring: each metric name goes to exactly one backend"
    echo ".SH SYNOPSIS"
    echo ".B statsrelay"
    echo "[\\fBrun\\fR] [\\fIoptions\\fR] \\fIBACKEND\\fR..."
    echo ".br"
    echo ".B statsrelay hash"
    echo "\\fB\\-\\-backends\\fR \\fIA,B,C\\fR \\fINAME\\fR..."
    echo ".br"
    echo ".B statsrelay sink"
    echo "\\fB\\-\\-port\\fR \\fIN\\fR..."
    echo ".SH DESCRIPTION"
    echo "The sections below are the program's own help for each command."
    echo "As a service, the relay's command line comes from"
    echo ".I /etc/default/statsrelay"
    echo "(see"
    echo ".BR systemctl (1)"
    echo "and the unit statsrelay.service)."
    for command in run check-config hash sink; do
        echo ".SH \"statsrelay $command\""
        echo ".nf"
        "$binary" help "$command" | roff_block
        echo ".fi"
    done
    echo ".SH FILES"
    echo ".TP"
    echo ".I /etc/default/statsrelay"
    echo "STATSRELAY_OPTS and STATSRELAY_BACKENDS, the service's command line."
    echo ".TP"
    echo ".I /etc/statsrelay/statsrelay.yaml"
    echo "The configuration file, every key commented out; used with \\fB\\-\\-config\\fR in STATSRELAY_OPTS, reloaded on SIGHUP."
    echo ".TP"
    echo ".I /lib/systemd/system/statsrelay.service"
    echo "The systemd unit."
    echo ".SH SEE ALSO"
    echo "/usr/share/doc/statsrelay/operations.md.gz, /usr/share/doc/statsrelay/README.md.gz"
} >"$work/statsrelay.1"
gzip -9n -c "$work/statsrelay.1" >"$root/usr/share/man/man1/statsrelay.1.gz"
chmod 644 "$root/usr/share/man/man1/statsrelay.1.gz"

for script in postinst prerm postrm; do
    install -m 755 "deploy/debian/$script" "$root/DEBIAN/$script"
done
printf '%s\n' /etc/default/statsrelay /etc/statsrelay/statsrelay.yaml >"$root/DEBIAN/conffiles"

# Shared-library dependencies with the versions the symbols need (libc6, liburing2, libstdc++6,
# libgcc-s1), as dh_shlibdeps finds them. adduser: postinst. procps: /bin/kill in ExecReload=.
mkdir -p "$work/src/debian"
printf 'Source: statsrelay\n\nPackage: statsrelay\nArchitecture: any\n' >"$work/src/debian/control"
shlibs="$(cd "$work/src" && dpkg-shlibdeps -O -e "$root/usr/bin/statsrelay" 2>/dev/null)"
shlibs="${shlibs#shlibs:Depends=}"
case "$shlibs" in
    *liburing2*) ;;
    *) echo "build-deb.sh: dpkg-shlibdeps found no liburing2 dependency ('$shlibs')" >&2; exit 70 ;;
esac

installed_kib="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat >"$root/DEBIAN/control" <<EOF
Package: statsrelay
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_kib
Depends: $shlibs, adduser, procps
Section: net
Priority: optional
Description: StatsD relay on io_uring, routing each metric name to one backend
 statsrelay receives StatsD lines over UDP, hashes each metric name to exactly
 one backend (FNV-1a 64 and jump consistent hash, as the Go StatsRelay does),
 packs lines into large UDP packets per backend and forwards them. Relays given
 the same backends route alike, so several can run behind a load balancer.
 .
 It uses io_uring where the kernel allows it and recvmmsg/sendmmsg elsewhere,
 checks the backends' health, and counts every line it drops. The package
 ships a hardened systemd unit configured from /etc/default/statsrelay.
EOF

(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$output"
deb="$output/statsrelay_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
