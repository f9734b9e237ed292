#!/usr/bin/env bash
# CI check of the Debian package: builds it with scripts/build-deb.sh, then checks its metadata
# and contents without installing it (nothing is started, no user is created):
#   - control fields: name, version = the packaged binary's --version, architecture, Depends
#     (libc6, liburing2, adduser, procps), /etc/default/statsrelay and /etc/statsrelay/statsrelay.yaml
#     as conffiles;
#   - the files, their owners and modes; md5sums; maintainer scripts' shell syntax;
#   - the packaged binary runs from the extracted tree, has the Swift standard library linked in
#     and every shared library it needs present here;
#   - systemd-analyze verify on the packaged unit (man page included), where systemd is installed;
#   - lintian (errors and warnings fail; pedantic and info tags are shown), where it is installed.
#
# With --install (root, Linux with overlayfs) it also installs the package for real, but only into
# a throwaway copy of this system: an overlay over / in private mount, PID, network, UTS and IPC
# namespaces, with a policy-rc.d that refuses every start and no systemd running in there. It
# checks install, the user, the enabled unit, an upgrade keeping an edited conffile, the relay
# run as the unit runs it (user statsrelay, only CAP_NET_ADMIN, NoNewPrivileges, memlock limit)
# relaying to a sink on the private loopback, remove and purge. Nothing reaches the host.
#
#   scripts/check-deb.sh [--install] [--binary PATH]   (--binary: package this build, don't build)
#
# Needs dpkg-dev and binutils; uses systemd, man-db and lintian when installed. About 30 s (45 s
# with --install) plus the release build: a re-link when .build/release is current, about 1.5
# minutes from clean on this 2-vCPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "check-deb: FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "check-deb: ok: $*" >&2; }

install_test=no
build_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --install) install_test=yes; shift ;;
        --binary) build_args+=(--binary "$2"); shift 2 ;;
        *) echo "check-deb.sh: unknown argument '$1'" >&2; exit 64 ;;
    esac
done

deb="$(scripts/build-deb.sh --output "$work/out" "${build_args[@]}" | tail -n 1)"
[ -f "$deb" ] || { echo "check-deb: build-deb.sh made no package" >&2; exit 1; }
echo "check-deb: checking $deb" >&2
dpkg-deb --info "$deb" >&2

field() { dpkg-deb --field "$deb" "$1"; }
root="$work/root"
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$work/control"

# Control fields.
[ "$(field Package)" = statsrelay ] && pass "Package" || fail "Package is '$(field Package)'"
binary_version="$("$root/usr/bin/statsrelay" --version)"
[ "statsrelay $(field Version)" = "$binary_version" ] && pass "Version $(field Version) = binary's --version" \
    || fail "Version '$(field Version)' but the binary says '$binary_version'"
[ "$(field Architecture)" = "$(dpkg --print-architecture)" ] && pass "Architecture" || fail "Architecture is '$(field Architecture)'"
[ "$(basename "$deb")" = "statsrelay_$(field Version)_$(field Architecture).deb" ] && pass "file name" || fail "file name $(basename "$deb")"
depends="$(field Depends)"
for package in libc6 liburing2 adduser procps; do
    if [[ ", $depends," == *", $package"[\ ,]* ]]; then pass "Depends: $package"; else fail "Depends lacks $package: $depends"; fi
done
[ -n "$(field Maintainer)" ] && pass "Maintainer" || fail "no Maintainer"
[ "$(cat "$work/control/conffiles")" = "$(printf '%s\n' /etc/default/statsrelay /etc/statsrelay/statsrelay.yaml)" ] && pass "conffiles" \
    || fail "conffiles: $(cat "$work/control/conffiles")"

# Maintainer scripts.
for script in postinst prerm postrm; do
    if [ -x "$work/control/$script" ] && sh -n "$work/control/$script"; then pass "$script"; else fail "$script missing, not executable or not valid sh"; fi
done
grep -q 'adduser .*--system --group .*statsrelay' "$work/control/postinst" && pass "postinst creates the statsrelay system user" \
    || fail "postinst does not create the system user"
grep -q "deb-systemd-helper enable 'statsrelay.service'" "$work/control/postinst" && pass "postinst enables the unit" \
    || fail "postinst does not enable the unit"

# Files: path, mode, owner.
contents="$(dpkg-deb --contents "$deb")"
expect_file() {
    local mode="$1" path="$2"
    if grep -qE "^$mode root/root +[0-9]+ [0-9-]+ [0-9:]+ \./${path//./\\.}\$" <<<"$contents"; then
        pass "$path ($mode root/root)"
    else
        fail "$path: not in the package as $mode root/root"
    fi
}
expect_file -rwxr-xr-x usr/bin/statsrelay
expect_file -rw-r--r-- lib/systemd/system/statsrelay.service
expect_file -rw-r--r-- etc/default/statsrelay
expect_file -rw-r--r-- etc/statsrelay/statsrelay.yaml
expect_file -rw-r--r-- usr/share/lintian/overrides/statsrelay
expect_file -rw-r--r-- usr/share/man/man1/statsrelay.1.gz
for doc in copyright changelog.gz README.md.gz operations.md.gz configuration.md.gz examples/keepalived.conf.example examples/statsrelay.socket; do
    expect_file -rw-r--r-- "usr/share/doc/statsrelay/$doc"
done
if grep -vE '^d' <<<"$contents" | grep -vE ' \./(usr/bin/statsrelay|lib/systemd/system/statsrelay\.service|etc/default/statsrelay|etc/statsrelay/statsrelay\.yaml|usr/share/lintian/overrides/statsrelay|usr/share/man/man1/statsrelay\.1\.gz|usr/share/doc/statsrelay/.*)$' >"$work/unexpected"; then
    fail "unexpected files: $(cat "$work/unexpected")"
else
    pass "no other files"
fi
cmp -s deploy/statsrelay.service "$root/lib/systemd/system/statsrelay.service" && pass "unit is deploy/statsrelay.service" || fail "unit differs from deploy/"
cmp -s deploy/statsrelay.default "$root/etc/default/statsrelay" && pass "/etc/default/statsrelay is deploy/statsrelay.default" || fail "default file differs from deploy/"
cmp -s deploy/statsrelay.yaml "$root/etc/statsrelay/statsrelay.yaml" && pass "/etc/statsrelay/statsrelay.yaml is deploy/statsrelay.yaml" || fail "configuration file differs from deploy/"
(cd "$root" && md5sum --quiet -c "$work/control/md5sums") && pass "md5sums" || fail "md5sums do not match"

# The environment file as shipped sets no backends (the package then enables but does not start).
backends="$(sh -c '. "$1"; printf %s "$STATSRELAY_BACKENDS"' sh "$root/etc/default/statsrelay")"
[ -z "$backends" ] && pass "shipped STATSRELAY_BACKENDS is empty" || fail "shipped STATSRELAY_BACKENDS is '$backends'"

# The binary.
if ldd "$root/usr/bin/statsrelay" | grep -q 'not found'; then fail "missing libraries: $(ldd "$root/usr/bin/statsrelay" | grep 'not found')"; else pass "every shared library found"; fi
if ldd "$root/usr/bin/statsrelay" | grep -q libswiftCore; then fail "Swift standard library linked dynamically"; else pass "Swift standard library linked statically"; fi
if file "$root/usr/bin/statsrelay" | grep -q 'not stripped'; then fail "binary not stripped"; else pass "binary stripped"; fi
# Argument parsing and hashing in the stripped binary (ArgumentParser reads Swift metadata).
routed="$("$root/usr/bin/statsrelay" hash --backends 10.0.0.1:8125,10.0.0.2:8125 some.metric 2>&1 || true)"
grep -q '10.0.0.[12]:8125' <<<"$routed" && pass "statsrelay hash runs" || fail "statsrelay hash: $routed"

# systemd's view of the unit, with ExecStart= and the man page pointed into the extracted tree.
if command -v systemd-analyze >/dev/null; then
    sed "s#^ExecStart=/usr/bin/statsrelay #ExecStart=$root/usr/bin/statsrelay #" \
        "$root/lib/systemd/system/statsrelay.service" >"$work/statsrelay.service"
    man_option=--man=no
    command -v man >/dev/null && man_option=--man=yes
    if verify="$(MANPATH="$root/usr/share/man" systemd-analyze verify "$man_option" "$work/statsrelay.service" 2>&1)" \
        && ! grep -q statsrelay.service <<<"$verify"; then
        pass "systemd-analyze verify ($man_option)"
    else
        fail "systemd-analyze verify: $verify"
    fi
else
    echo "check-deb: skipped: systemd-analyze verify (systemd not installed)" >&2
fi

# spelling-error-in-binary: truncated strings of the Swift runtime linked into the binary.
if command -v lintian >/dev/null; then
    if lintian --fail-on error,warning --display-info --pedantic --suppress-tags spelling-error-in-binary "$deb" >&2; then
        pass "lintian (no errors or warnings)"
    else
        fail "lintian"
    fi
else
    echo "check-deb: skipped: lintian (not installed: apt-get install lintian)" >&2
fi

if [ "$install_test" = yes ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null || ! command -v setpriv >/dev/null; then
        fail "--install needs root, unshare and setpriv"
    else
        # An upgrade needs a newer version: the same binary packaged once more.
        upgrade_version="$(field Version)+check1"
        upgrade="$(scripts/build-deb.sh --output "$work/out" --binary "$root/usr/bin/statsrelay" --version "$upgrade_version" | tail -n 1)"
        install -m 755 /dev/stdin "$work/inside.sh" <<'INSIDE'
#!/bin/bash
# Runs chrooted into the overlay, in private namespaces: see check-deb.sh --install.
set -u
export DEBIAN_FRONTEND=noninteractive
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; }
check() { local what="$1"; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; return 1; fi; }
wants=/etc/systemd/system/multi-user.target.wants/statsrelay.service

apt-get install -y -q /tmp/debs/first.deb >/tmp/apt.log 2>&1; check "apt install ./statsrelay.deb" [ $? -eq 0 ] || cat /tmp/apt.log
check "statsrelay is a system user with no login" grep -q '^statsrelay:x:[0-9]*:[0-9]*::/nonexistent:/usr/sbin/nologin$' /etc/passwd
check "statsrelay group" getent group statsrelay
check "unit enabled" [ "$(readlink "$wants")" = /lib/systemd/system/statsrelay.service ]
check "/etc/default/statsrelay installed" [ -f /etc/default/statsrelay ]

sed -i 's/^STATSRELAY_BACKENDS=""/STATSRELAY_BACKENDS="127.0.0.1:39201"/' /etc/default/statsrelay
apt-get install -y -q /tmp/debs/upgrade.deb >/tmp/apt.log 2>&1; check "upgrade" [ $? -eq 0 ] || cat /tmp/apt.log
check "upgrade keeps the edited conffile" grep -q '^STATSRELAY_BACKENDS="127.0.0.1:39201"$' /etc/default/statsrelay
check "upgrade keeps the unit enabled" [ -L "$wants" ]

# The relay as the unit starts it: its user, CAP_NET_ADMIN only (ambient), NoNewPrivileges, the
# unit's limits (or this host's hard limits, when lower: raising them needs CAP_SYS_RESOURCE).
ip link set lo up
. /etc/default/statsrelay
memlock=$((64 << 20)); hard=$(ulimit -H -l); [ "$hard" != unlimited ] && [ $((hard * 1024)) -lt $memlock ] && memlock=$((hard * 1024))
nofile=65536; hard=$(ulimit -H -n); [ "$hard" != unlimited ] && [ "$hard" -lt $nofile ] && nofile=$hard
/usr/bin/statsrelay sink --port 39201 >/tmp/sink.out 2>&1 &
sink=$!
prlimit --memlock=$memlock:$memlock --nofile=$nofile:$nofile -- \
    setpriv --reuid=statsrelay --regid=statsrelay --clear-groups --no-new-privs \
        --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin --bounding-set=-all,+net_admin \
        /usr/bin/statsrelay $STATSRELAY_OPTS --bind 127.0.0.1 --port 8125 $STATSRELAY_BACKENDS >/tmp/relay.out 2>&1 &
relay=$!
for _ in $(seq 100); do grep -q "listening on" /tmp/relay.out && break; sleep 0.1; done
check "relay started as statsrelay" grep -q "listening on" /tmp/relay.out || cat /tmp/relay.out
check "relay runs with CAP_NET_ADMIN only" grep -q '^CapEff:[[:space:]]*0000000000001000$' /proc/$relay/status
check "relay runs with NoNewPrivs" grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/$relay/status
python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(1000): s.sendto(b"check.%d:1|c" % i, ("127.0.0.1", 8125))'
kill -HUP $relay; sleep 0.3
check "relay keeps running after SIGHUP" kill -0 $relay
kill -TERM $relay; wait $relay; check "relay stops with status 0 on SIGTERM" [ $? -eq 0 ]
kill -TERM $sink; wait $sink
check "the sink got all 1000 lines" grep -q "lines=1000$" /tmp/sink.out || { cat /tmp/sink.out; cat /tmp/relay.out; }
grep -o "io_backend=[a-z]*\|rcvbuf_obtained=[0-9]*" /tmp/relay.out | sort -u | sed 's/^/info: /'

dpkg -r statsrelay >/tmp/apt.log 2>&1; check "dpkg -r" [ $? -eq 0 ] || cat /tmp/apt.log
check "remove takes the binary" [ ! -e /usr/bin/statsrelay ]
check "remove keeps the conffile" [ -f /etc/default/statsrelay ]
dpkg -P statsrelay >/tmp/apt.log 2>&1; check "dpkg -P" [ $? -eq 0 ] || cat /tmp/apt.log
check "purge takes the conffile" [ ! -e /etc/default/statsrelay ]
check "purge leaves no enable link" [ ! -L "$wants" ]
check "purge leaves no mask" [ ! -L /etc/systemd/system/statsrelay.service ]
check "purge keeps the user" getent passwd statsrelay
INSIDE
        install -m 755 /dev/stdin "$work/outside.sh" <<'OUTSIDE'
#!/bin/bash
# Runs in private namespaces: builds the overlay root and runs inside.sh in it.
set -eu
work="$1"
overlay="$work/overlay"
mkdir -p "$overlay"
mount -t tmpfs tmpfs "$overlay"
mkdir -p "$overlay/upper" "$overlay/work" "$overlay/merged"
mount -t overlay overlay -o "lowerdir=/,upperdir=$overlay/upper,workdir=$overlay/work" "$overlay/merged"
merged="$overlay/merged"
mount -t proc proc "$merged/proc"
mount -t sysfs sysfs "$merged/sys"
mount --rbind /dev "$merged/dev"
mount -t tmpfs tmpfs "$merged/run"
mount -t tmpfs tmpfs "$merged/tmp"
mkdir "$merged/tmp/debs"
cp "$2" "$merged/tmp/debs/first.deb"
cp "$3" "$merged/tmp/debs/upgrade.deb"
cp "$work/inside.sh" "$merged/tmp/inside.sh"
printf '#!/bin/sh\nexit 101\n' >"$merged/usr/sbin/policy-rc.d"
chmod 755 "$merged/usr/sbin/policy-rc.d"
chroot "$merged" /tmp/inside.sh
OUTSIDE
        timeout 300 unshare --mount --propagation private --pid --fork --net --uts --ipc \
            "$work/outside.sh" "$work" "$deb" "$upgrade" >"$work/install.log" 2>&1 || true
        while IFS= read -r line; do
            case "$line" in
                ok:*) pass "install: ${line#ok: }" ;;
                FAIL:*) fail "install: ${line#FAIL: }" ;;
                info:*) echo "check-deb: install: ${line#info: }" >&2 ;;
                *) echo "check-deb: install: | $line" >&2 ;;
            esac
        done <"$work/install.log"
        grep -q '^ok: purge keeps the user' "$work/install.log" || fail "install test did not run to its end"
    fi
fi

echo "check-deb: $failures failure(s), $((SECONDS - start)) s" >&2
[ "$failures" -eq 0 ]
