#!/usr/bin/env bash
# CI check of the Debian package: builds it with scripts/build-deb.sh, then checks its metadata
# and contents without installing it (nothing is started, no user is created):
#   - control fields: name, version = the packaged binary's --version, architecture, Depends
#     (libc6, liburing2, adduser, procps), /etc/default/statsrelay as a conffile;
#   - the files, their owners and modes; md5sums; maintainer scripts' shell syntax;
#   - the packaged binary runs from the extracted tree, has the Swift standard library linked in
#     and every shared library it needs present here;
#   - systemd-analyze verify on the packaged unit (man page included), where systemd is installed;
#   - lintian (errors and warnings fail; pedantic and info tags are shown), where it is installed.
#
#   scripts/check-deb.sh [--binary PATH]   (--binary: package this build instead of building)
#
# Needs dpkg-dev and binutils; uses systemd, man-db and lintian when installed. About 15 s plus the
# release build (a re-link when .build/release is current; ~7 minutes from clean on 2 vCPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "check-deb: FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "check-deb: ok: $*" >&2; }

deb="$(scripts/build-deb.sh --output "$work/out" "$@" | tail -n 1)"
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
[ "$(cat "$work/control/conffiles")" = /etc/default/statsrelay ] && pass "conffiles" \
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
expect_file -rw-r--r-- usr/share/man/man1/statsrelay.1.gz
for doc in copyright changelog.gz README.md.gz operations.md.gz examples/keepalived.conf.example; do
    expect_file -rw-r--r-- "usr/share/doc/statsrelay/$doc"
done
if grep -vE '^d' <<<"$contents" | grep -vE ' \./(usr/bin/statsrelay|lib/systemd/system/statsrelay\.service|etc/default/statsrelay|usr/share/man/man1/statsrelay\.1\.gz|usr/share/doc/statsrelay/.*)$' >"$work/unexpected"; then
    fail "unexpected files: $(cat "$work/unexpected")"
else
    pass "no other files"
fi
cmp -s deploy/statsrelay.service "$root/lib/systemd/system/statsrelay.service" && pass "unit is deploy/statsrelay.service" || fail "unit differs from deploy/"
cmp -s deploy/statsrelay.default "$root/etc/default/statsrelay" && pass "/etc/default/statsrelay is deploy/statsrelay.default" || fail "default file differs from deploy/"
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

echo "check-deb: $failures failure(s), $((SECONDS - start)) s" >&2
[ "$failures" -eq 0 ]
