#!/usr/bin/env bash
# Test the Debian package in a clean root: what it contains and where, lintian, the programs
# and man pages, the shipped configuration, the unit (systemd-analyze), and install ->
# upgrade -> remove -> purge with the real maintainer scripts.
#
#   scripts/test-deb.sh [--no-build]
#
# Builds the package with scripts/build-deb.sh (--no-build: from the release binaries already
# built) into a temporary directory, plus a copy with a higher version for the upgrade.
# Installs with `dpkg --root=DIR --force-script-chrootless`: no chroot and no downloads; the
# maintainer scripts run on this machine with DPKG_ROOT=DIR and must only touch DIR (they
# leave the running system's services alone when DPKG_ROOT is set). Running the service under
# systemd is tests/xen-qemu's job. lintian runs when installed (CI installs it); zsh and fish
# check their completions when installed.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_ARGS=()
case "${1:-}" in
    --no-build) BUILD_ARGS=(--no-build) ;;
    "") ;;
    *) echo "usage: scripts/test-deb.sh [--no-build]" >&2; exit 2 ;;
esac

failures=0
say() { printf 'test-deb: %s\n' "$*"; }
ok() { printf 'test-deb: ok    %s\n' "$*"; }
fail() { printf 'test-deb: FAIL  %s\n' "$*" >&2; failures=$((failures + 1)); }
die() { printf 'test-deb: FAIL  %s\n' "$*" >&2; exit 1; }
check() { # check DESCRIPTION COMMAND...: run COMMAND, ok if it succeeds
    local what=$1; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

TMP=$(mktemp -d /tmp/tmem-test-deb.XXXXXX)
SHM=/dev/shm/tmem-test-deb.$$
DAEMON_PID=""
cleanup() {
    if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null || true; fi
    rm -rf "$TMP" "$SHM"
}
trap cleanup EXIT

upstream=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
V1=$upstream-1
V2=$upstream-1+upgradetest1
say "building $V1 and $V2 into $TMP"
scripts/build-deb.sh "${BUILD_ARGS[@]}" --out "$TMP/v1" >/dev/null
scripts/build-deb.sh --no-build --version "$V2" --out "$TMP/v2" >/dev/null
DEB=$TMP/v1/tmemd_${V1}_amd64.deb
DEB2=$TMP/v2/tmemd_${V2}_amd64.deb
[ -f "$DEB" ] && [ -f "$DEB2" ] || die "build-deb.sh did not write $DEB and $DEB2"

# --- 1. The package as a file: every path where Debian policy puts it, nothing else. ---
dpkg-deb -c "$DEB" | awk '{ print $1, $2, $6 }' | sed 's#^\([^ ]*\) \([^ ]*\) \./#\1 \2 /#' \
    >"$TMP/contents"
grep -v '^d' "$TMP/contents" | awk '{ print $3 }' | LC_ALL=C sort >"$TMP/files"
{
    printf '%s\n' /usr/sbin/tmemd /usr/sbin/tmem \
        /lib/systemd/system/tmemd.service /lib/systemd/system/tmem-metrics.service \
        /lib/systemd/system/tmem-metrics.timer /etc/tmemd/tmemd.toml \
        /usr/share/bash-completion/completions/tmem /usr/share/bash-completion/completions/tmemd \
        /usr/share/zsh/vendor-completions/_tmem /usr/share/zsh/vendor-completions/_tmemd \
        /usr/share/fish/vendor_completions.d/tmem.fish /usr/share/fish/vendor_completions.d/tmemd.fish \
        /usr/share/doc/tmemd/copyright /usr/share/doc/tmemd/changelog.Debian.gz \
        /usr/share/doc/tmemd/operations.md /usr/share/doc/tmemd/xen-dom0.md \
        /usr/share/lintian/overrides/tmemd /usr/share/man/man8/tmem.8.gz /usr/share/man/man8/tmemd.8.gz
    # One page per tmem subcommand, nested ones too.
    for sub in list freeze thaw set shared-auth freeable flush destroy save restore status metrics top generate \
        generate-man generate-completions; do
        echo "/usr/share/man/man8/tmem-$sub.8.gz"
    done
} | LC_ALL=C sort >"$TMP/expected"
if diff -u "$TMP/expected" "$TMP/files" >"$TMP/files.diff"; then
    ok "the package holds exactly the $(wc -l <"$TMP/files") expected files"
else
    fail "package contents differ from the expected list (- expected, + found):"
    sed -n '3,$p' "$TMP/files.diff" | grep '^[-+]' >&2
fi
check "every entry is owned by root:root" \
    test -z "$(awk '$2 != "root/root"' "$TMP/contents")"
check "programs are 0755, every other file 0644, directories 0755" test -z "$(awk '
    $3 ~ /^\/usr\/sbin\/[^\/]+$/ { if ($1 != "-rwxr-xr-x") print; next }
    $1 ~ /^d/ { if ($1 != "drwxr-xr-x") print; next }
    $1 != "-rw-r--r--" { print }' "$TMP/contents")"
check "every file under /etc is a conffile, and only those" \
    test "$(dpkg-deb -I "$DEB" conffiles)" = "$(grep '^/etc/' "$TMP/files")"
check "Depends names libc6 with a version" \
    grep -Eq '^Depends: .*libc6 \(>= [0-9.]+\)' <(dpkg-deb -f "$DEB" Depends | sed 's/^/Depends: /')
check "Section admin, Priority optional, Architecture amd64" test \
    "$(dpkg-deb -f "$DEB" Section Priority Architecture | tr '\n' ' ')" = \
    "Section: admin Priority: optional Architecture: amd64 "
x=$TMP/extract
dpkg-deb -x "$DEB" "$x"
gz_ok=1
for f in "$x"/usr/share/man/man8/*.gz "$x"/usr/share/doc/tmemd/changelog.Debian.gz; do
    # gzip -9n: no file name (FLG bit 3) and no time stamp (MTIME) in the header.
    hdr=$(od -An -tx1 -N8 "$f" | tr -d ' \n')
    [ "${hdr:6:2}" = 00 ] && [ "${hdr:8:8}" = 00000000 ] || { gz_ok=0; echo "  $f: header $hdr" >&2; }
done
check "man pages and changelog are gzip -9n (no name, no time stamp)" test "$gz_ok" = 1
check "binaries are stripped (no symbol table)" \
    test -z "$(for b in "$x"/usr/sbin/*; do readelf -S "$b" | grep -q '\.symtab' && echo "$b"; done)"
# Licences: a paragraph for every crate linked into the binaries, and the text (or, for
# Apache-2.0, the common-licenses reference) of every licence those paragraphs name.
cr=$x/usr/share/doc/tmemd/copyright
missing=""
for c in $(cargo tree --locked --offline -p tmemd -p tmem-cli -e normal --prefix none --format '{p}' \
               2>/dev/null | grep -v -e '(/' -e '(proc-macro)' | sed 's/ v/-/; s/ .*//' | sort -u); do
    grep -qxF "Files: rust-crates/$c/*" "$cr" || missing="$missing $c"
done
check "the copyright file has a paragraph for every linked crate${missing:+ (missing:$missing)}" \
    test -z "$missing" -a "$(grep -c '^Files: rust-crates/' "$cr")" -gt 10
names=$(sed -n 's/^License: //p' "$cr" | sed 's/[()]//g; s/ or /\n/g; s/ and /\n/g' | sort -u)
texts=$(awk '/^License: / && !/^License: .* (or|and) / { name = substr($0, 10); getline; if ($0 ~ /^ /) print name }' "$cr" |
            sort -u)
check "every licence named in the copyright file is given in full: $(echo $names)" \
    test "$names" = "$texts" -a -n "$(grep -x ' /usr/share/common-licenses/Apache-2.0.' "$cr")"
check "the unit runs /usr/sbin/tmemd with /etc/tmemd/tmemd.toml" \
    grep -q '^ExecStart=/usr/sbin/tmemd -c /etc/tmemd/tmemd.toml$' "$x/lib/systemd/system/tmemd.service"
check "the shipped configuration offers tmem to every domain (no xen_domains, no [[guest]])" \
    test -z "$(grep -E '^[[:space:]]*(xen_domains|xen|\[\[guest\]\])([[:space:]=]|$)' "$x/etc/tmemd/tmemd.toml")"

# --- 2. lintian ---
if command -v lintian >/dev/null; then
    lintian --pedantic --display-info "$DEB" >"$TMP/lintian" 2>&1 || true
    grep -v -e '^N:' -e 'running with root privileges' "$TMP/lintian" || true
    if grep -Eq '^[EWIP]: ' "$TMP/lintian"; then
        fail "lintian has something to say (above)"
    else
        ok "lintian --pedantic --display-info: nothing"
    fi
else
    say "lintian not installed: skipped (apt install lintian)"
fi

# --- 3. The programs, man pages and completions, run from the package's files. ---
check "tmemd --version" test "$("$x/usr/sbin/tmemd" --version)" = "tmemd $upstream"
check "tmem --version" test "$("$x/usr/sbin/tmem" --version)" = "tmem $upstream"
man_ok=1
for page in "$x"/usr/share/man/man8/*.8.gz; do
    name=$(basename "$page" .8.gz)
    if ! MANWIDTH=100 man --warnings -l "$page" >"$TMP/man.out" 2>"$TMP/man.err" ||
        [ -s "$TMP/man.err" ] || ! grep -q SYNOPSIS "$TMP/man.out"; then
        man_ok=0; echo "  $name:" >&2; cat "$TMP/man.err" >&2
    fi
    # Every page another page names must be in the package.
    for ref in $(grep -o '[a-z][a-z-]*(8)' "$TMP/man.out" | sort -u); do
        [ -f "$x/usr/share/man/man8/${ref%(8)}.8.gz" ] || { man_ok=0; echo "  $name names $ref, not shipped" >&2; }
    done
done
check "every man page renders without warnings and names only shipped pages" test "$man_ok" = 1
MANWIDTH=100 man -M "$x/usr/share/man" tmemd >"$TMP/tmemd.man" 2>&1 || true
check "man tmemd: a typeable synopsis" grep -q '^ *tmemd \[-c FILE\] \[--socket PATH\]' "$TMP/tmemd.man"
MANWIDTH=100 man -M "$x/usr/share/man" tmem >"$TMP/tmem.man" 2>&1 || true
check "man tmem: synopsis and exit status" \
    grep -q '^ *tmem \[--socket PATH\] COMMAND' "$TMP/tmem.man"
MANWIDTH=100 man -M "$x/usr/share/man" tmem-set >"$TMP/set.man" 2>&1 || true
check "man tmem-set: (DOMAIN | -a) [-w WEIGHT] ..." \
    grep -q 'tmem set (DOMAIN | -a) \[-w WEIGHT\] \[-c CAP\] \[-p 0|1\]' "$TMP/set.man"
check "bash completion loads and completes tmem's subcommands" bash -c '
    source "$1" && complete -p tmem >/dev/null &&
    COMP_WORDS=(tmem sh) COMP_CWORD=1 COMP_LINE="tmem sh" COMP_POINT=7 &&
    _tmem tmem sh tmem && [ "${COMPREPLY[*]}" = shared-auth ]' _ \
    "$x/usr/share/bash-completion/completions/tmem"
if command -v zsh >/dev/null; then
    check "zsh completion parses" zsh -n "$x/usr/share/zsh/vendor-completions/_tmem"
fi
if command -v fish >/dev/null; then
    check "fish completion parses" fish -n "$x/usr/share/fish/vendor_completions.d/tmem.fish"
fi

# --- 4. The shipped configuration works as shipped: tmemd starts with it and answers. ---
# Only the paths move (sockets, page file) so that the test does not touch /run; Xen off so
# that a test on a dom0 offers nothing to its guests.
"$x/usr/sbin/tmemd" -c "$x/etc/tmemd/tmemd.toml" --no-xen --socket "$TMP/guest.sock" \
    --control-socket "$TMP/control.sock" --page-file "$SHM/pages" 2>"$TMP/tmemd.log" &
DAEMON_PID=$!
started=0
for _ in $(seq 600); do # up to 60 s: faulting in 256 MiB on a busy machine takes seconds
    if "$x/usr/sbin/tmem" --socket "$TMP/control.sock" status >"$TMP/status" 2>/dev/null; then
        started=1; break
    fi
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
done
if [ "$started" = 1 ] && grep -q "^tmemd $upstream " "$TMP/status"; then
    ok "tmemd starts with /etc/tmemd/tmemd.toml as shipped; tmem status answers"
else
    fail "tmemd with the shipped configuration did not answer tmem status:"
    cat "$TMP/tmemd.log" >&2
fi
kill -TERM "$DAEMON_PID" 2>/dev/null || true
rc=0; wait "$DAEMON_PID" || rc=$?
DAEMON_PID=""
check "tmemd stops on SIGTERM with status 0" test "$rc" = 0

# --- 5. The unit: systemd-analyze verify and security, against the package's files. ---
if command -v systemd-analyze >/dev/null; then
    # verify resolves units, executables and man pages inside --root: give it the system's
    # units and a shell beside the package's files (this is a scratch copy, not the test root).
    v=$TMP/verify-root
    dpkg-deb -x "$DEB" "$v"
    cp -an /lib/systemd/system/. "$v/lib/systemd/system/"
    mkdir -p "$v/bin" && cp /bin/sh "$v/bin/sh"
    if MANPATH=$v/usr/share/man systemd-analyze --root="$v" verify \
        tmemd.service tmem-metrics.service tmem-metrics.timer >"$TMP/verify" 2>&1; then
        ok "systemd-analyze verify: tmemd.service tmem-metrics.service tmem-metrics.timer"
    else
        fail "systemd-analyze verify:"; cat "$TMP/verify" >&2
    fi
    systemd-analyze security --offline=yes --root="$v" tmemd.service >"$TMP/security" 2>&1 || true
    exposure=$(sed -n 's/.*Overall exposure level for tmemd.service: \([0-9.]*\).*/\1/p' "$TMP/security")
    # 1.4 when written; the sandbox must not quietly get weaker.
    if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
        ok "systemd-analyze security: exposure $exposure (at most 2.0)"
    else
        fail "systemd-analyze security: exposure '${exposure:-?}' (want at most 2.0):"
        tail -5 "$TMP/security" >&2
    fi
else
    say "systemd-analyze not installed: unit checks skipped"
fi

# --- 6. install -> upgrade -> remove -> purge in a clean root, with the maintainer scripts. ---
R=$TMP/root
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates"
: >"$R/var/lib/dpkg/available"
# The root's dpkg database knows the libraries Depends names, as installed on this machine,
# so that dpkg checks the dependencies instead of being told to ignore them.
deps=$(dpkg-deb -f "$DEB" Depends | tr ',' '\n' | sed 's/^ *//; s/[ (].*//' | grep .)
: >"$R/var/lib/dpkg/status"
for d in $deps; do
    dpkg-query -s "$d:amd64" >>"$R/var/lib/dpkg/status" 2>/dev/null ||
        dpkg-query -s "$d" >>"$R/var/lib/dpkg/status" || die "$d (Depends) is not installed here"
    echo >>"$R/var/lib/dpkg/status"
    : >"$R/var/lib/dpkg/info/$d:amd64.list"
done
# --path-include: a host whose dpkg.cfg.d leaves out man pages or docs (container images do)
# must not change what is installed here.
DPKG=(dpkg --root="$R" --force-script-chrootless --log="$TMP/dpkg.log" --path-include="/*")
state() { dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Status} ${Version}' tmemd 2>/dev/null || true; }
WANTS=$R/etc/systemd/system/multi-user.target.wants/tmemd.service

"${DPKG[@]}" -i "$DEB" >"$TMP/dpkg.out" 2>&1 || { cat "$TMP/dpkg.out" >&2; die "dpkg -i $V1 failed"; }
check "install: dpkg says installed $V1" test "$(state)" = "install ok installed $V1"
listed=$(dpkg-query --admindir="$R/var/lib/dpkg" -L tmemd | while read -r p; do
    [ -d "$R$p" ] || echo "$p"; done | LC_ALL=C sort)
check "install: dpkg -L lists exactly the package's files, each present in the root" \
    test "$listed" = "$(cat "$TMP/files")" -a -z "$(while read -r p; do [ -e "$R$p" ] || echo "$p"; done <"$TMP/files")"
check "install: tmemd.service enabled (multi-user.target.wants link)" \
    test "$(readlink "$WANTS")" = /lib/systemd/system/tmemd.service
check "install: the metrics timer is not enabled" \
    test ! -e "$R/etc/systemd/system/timers.target.wants/tmem-metrics.timer"
check "install: the installed tmemd runs" test "$("$R/usr/sbin/tmemd" --version)" = "tmemd $upstream"

# The administrator edits the configuration and disables the unit; an upgrade keeps both.
echo 'log_level = "debug"   # edited by the administrator' >>"$R/etc/tmemd/tmemd.toml"
systemctl --root="$R" --quiet disable tmemd.service
check "before upgrade: the unit is disabled" test ! -e "$WANTS"
"${DPKG[@]}" -i "$DEB2" >"$TMP/dpkg.out" 2>&1 || { cat "$TMP/dpkg.out" >&2; die "upgrade to $V2 failed"; }
check "upgrade: dpkg says installed $V2" test "$(state)" = "install ok installed $V2"
check "upgrade: the administrator's edit of the conffile is kept" \
    grep -q 'edited by the administrator' "$R/etc/tmemd/tmemd.toml"
check "upgrade: no .dpkg-dist or .dpkg-old (unchanged conffile, no prompt)" \
    test -z "$(find "$R/etc/tmemd" -mindepth 1 ! -name tmemd.toml)"
check "upgrade: a unit the administrator disabled stays disabled" test ! -e "$WANTS"
systemctl --root="$R" --quiet enable tmemd.service
"${DPKG[@]}" -i "$DEB2" >"$TMP/dpkg.out" 2>&1 || { cat "$TMP/dpkg.out" >&2; die "reinstall of $V2 failed"; }
check "reinstall: an enabled unit stays enabled" test -L "$WANTS"

"${DPKG[@]}" -r tmemd >"$TMP/dpkg.out" 2>&1 || { cat "$TMP/dpkg.out" >&2; die "dpkg -r failed"; }
check "remove: dpkg says config-files" test "$(state)" = "deinstall ok config-files $V2"
check "remove: programs, units, pages and completions are gone" \
    test -z "$(grep -v '^/etc/' "$TMP/files" | while read -r p; do [ -e "$R$p" ] && echo "$p"; done)"
check "remove: the conffile stays" test -f "$R/etc/tmemd/tmemd.toml"

# What purge must also clean: dpkg's leftovers of the conffile, and page memory that a
# tmemd run by hand left on /run.
: >"$R/etc/tmemd/tmemd.toml.dpkg-old"
mkdir -p "$R/run/tmemd-pages" && : >"$R/run/tmemd-pages/pages"
"${DPKG[@]}" -P tmemd >"$TMP/dpkg.out" 2>&1 || { cat "$TMP/dpkg.out" >&2; die "dpkg -P failed"; }
check "purge: dpkg no longer knows tmemd" test -z "$(state)"
# Left: dpkg's database, and the empty standard directories deb-systemd-helper made (on a
# real system they belong to systemd and base-files).
left=$(cd "$R" && find . -path ./var/lib/dpkg -prune -o -print | sed 's#^\.##' | grep . |
    grep -vx -e /etc -e /etc/systemd -e /etc/systemd/system -e /var -e /var/lib \
        -e /var/lib/systemd -e /run || true)
if [ -z "$left" ]; then
    ok "purge: nothing left but dpkg's database and empty system directories"
else
    fail "purge left files behind:"; echo "$left" >&2
fi

if [ "$failures" = 0 ]; then
    say "all checks passed"
else
    say "$failures check(s) failed"
    exit 1
fi
