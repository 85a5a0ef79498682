#!/usr/bin/env bash
# Build the Debian package: target/debian/tmemd_<version>_amd64.deb (Debian 12 layout).
#
#   scripts/build-deb.sh [--version VERSION] [--no-build] [--out DIR]
#
# --version   the package version (default: the workspace version, Debian revision 1)
# --no-build  package the release binaries already in the target dir (no cargo run)
# --out DIR   where the package (and its staging tree) goes (default: target/debian)
#
# Plain dpkg-deb, no debhelper or cargo-deb: the package is a handful of files, and every
# one of them (binaries, unit, conffile, man pages, completions, copyright, maintainer
# scripts) is put in place here where it can be read. Needs cargo, dpkg-deb and gzip;
# dpkg-shlibdeps (dpkg-dev) computes Depends when installed.
set -euo pipefail
die() { echo "build-deb: $*" >&2; exit 1; }

VERSION="" BUILD=1 OUT=""
while [ $# -gt 0 ]; do
    case $1 in
        --version) VERSION=${2:?--version needs a value}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT=$(realpath -m -- "${2:?--out needs a directory}"); shift 2 ;;
        *) die "unknown argument '$1'; usage: scripts/build-deb.sh [--version VERSION] [--no-build] [--out DIR]" ;;
    esac
done
cd "$(dirname "$0")/.."
REPO=$PWD
upstream=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$upstream" ] || die "no version in Cargo.toml's [workspace.package]"
VERSION=${VERSION:-$upstream-1}
case $VERSION in
    [0-9]*-[0-9A-Za-z]*) ;;
    *) die "version '$VERSION' needs a Debian revision, e.g. $upstream-1" ;;
esac
ARCH=amd64
[ "$(uname -m)" = x86_64 ] || die "only amd64 is packaged (this machine is $(uname -m))"
for tool in dpkg-deb gzip; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt install dpkg gzip)"
done

# One date for every timestamp, so that two builds of one commit give the same package.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET/release
OUT=${OUT:-$TARGET/debian}
mkdir -p "$OUT"
ROOT=$OUT/root
GEN=$OUT/generated
DEB=$OUT/tmemd_${VERSION}_${ARCH}.deb

if [ "$BUILD" = 1 ]; then
    cargo build --release --locked -p tmemd -p tmem-cli -p tmem-gen-docs
fi
for b in tmemd tmem tmem-gen-docs; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing; run without --no-build"
done

rm -rf "$ROOT" "$GEN"
mkdir -p "$ROOT/DEBIAN" "$GEN"

# Binaries, stripped as dh_strip would (the release profile keeps line tables for profiling).
install -d "$ROOT/usr/sbin"
for b in tmemd tmem; do
    install -m 0755 "$BIN/$b" "$ROOT/usr/sbin/$b"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$ROOT/usr/sbin/$b"
done

# Units. The metrics timer is shipped but not enabled: it needs a node_exporter and a
# read-only group first (operations.md, "Metrics").
install -d "$ROOT/lib/systemd/system"
install -m 0644 systemd/tmemd.service systemd/tmem-metrics.service systemd/tmem-metrics.timer \
    "$ROOT/lib/systemd/system/"

# The configuration: a conffile, valid as shipped (every setting commented at its default).
install -d "$ROOT/etc/tmemd"
install -m 0644 xen-config/tmemd.toml "$ROOT/etc/tmemd/tmemd.toml"

# Man pages and completions, generated from the parsers.
date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)
"$BIN/tmem-gen-docs" "$GEN" --date "$date" >/dev/null
install -d "$ROOT/usr/share/man/man8"
for page in "$GEN"/man8/*.8; do
    gzip -9n <"$page" >"$ROOT/usr/share/man/man8/$(basename "$page").gz"
done
install -D -m 0644 -t "$ROOT/usr/share/bash-completion/completions" "$GEN"/completions/bash/*
install -D -m 0644 -t "$ROOT/usr/share/zsh/vendor-completions" "$GEN"/completions/zsh/*
install -D -m 0644 -t "$ROOT/usr/share/fish/vendor_completions.d" "$GEN"/completions/fish/*

# Documentation. operations.md stays uncompressed: the units link to it by file: URL.
DOC=$ROOT/usr/share/doc/tmemd
install -d "$DOC"
install -m 0644 docs/operations.md "$DOC/operations.md"
install -m 0644 xen-config/README.md "$DOC/xen-dom0.md"
install -D -m 0644 packaging/debian/lintian-overrides "$ROOT/usr/share/lintian/overrides/tmemd"
maintainer=${DEBFULLNAME:+$DEBFULLNAME <${DEBEMAIL:-}>}
maintainer=${maintainer:-$(git log -1 --format='%an <%ae>' 2>/dev/null || true)}
[ -n "$maintainer" ] || die "no maintainer: set DEBFULLNAME and DEBEMAIL"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
    printf 'tmemd (%s) unstable; urgency=medium\n\n' "$VERSION"
    printf '  * Built from the tmemd source tree, commit %s.\n\n' "$commit"
    printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$DOC/changelog.Debian.gz"

# Copyright (machine-readable format). The workspace is "MIT OR Apache-2.0". The binaries are
# statically linked with crates from crates.io: each gets a paragraph with the copyright
# lines of its own licence files (or its authors) and its licence, and every licence used is
# given in full (Apache-2.0 by reference to common-licenses, as Debian policy asks), its text
# taken from the crate that ships it. A crate under a licence this script does not know
# stops the build: add its text here.
license=$(sed -n '/^\[workspace.package\]/,/^\[/s/^license *= *"\(.*\)"/\1/p' Cargo.toml)
[ "$license" = "MIT OR Apache-2.0" ] || die "licence '$license' changed: update the copyright text in $0"
command -v jq >/dev/null || die "jq is missing (apt install jq): it reads cargo metadata for the copyright file"
year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
crates=$(cargo tree --locked --offline -p tmemd -p tmem-cli -e normal --prefix none \
            --format '{p}|{l}' 2>/dev/null | grep -v -e '(/' -e '(proc-macro)' | sed 's/ (\*)$//' |
            grep . | sort -u | sed 's/^\([^ ]*\) v\([^|]*\)|\(.*\)$/\1|\2|\3/') ||
    die "cargo tree failed: the crate list for the copyright file needs the registry cache"
# Only this platform's crates: without the filter cargo wants every target's (Windows-only
# crates too), which a fresh machine's build never fetched.
host=$(rustc -vV | sed -n 's/^host: //p')
metadata=$(cargo metadata --locked --offline --format-version 1 --filter-platform "$host" 2>/dev/null) ||
    die "cargo metadata failed: the copyright file needs the registry cache (run 'cargo fetch --locked' once)"

# An SPDX expression as a DEP-5 licence field ("MIT" is "Expat" there; "/" is an old "OR").
dep5_license() {
    sed -e 's#/# OR #g' -e 's/\bMIT\b/Expat/g' -e 's/ OR / or /g' -e 's/ AND / and /g' \
        -e 's/ WITH LLVM-exception/ with LLVM-exception/g' <<<"$1"
}
# A file's text as the body of a DEP-5 field: each line indented, empty lines as " .".
# Leading and trailing empty lines are dropped.
dep5_text() {
    sed -e 's/[[:space:]]*$//' "$1" |
        awk '{ line[NR] = $0 } $0 != "" { if (!first) first = NR; last = NR }
             END { for (i = first; i <= last; i++) print (line[i] == "" ? " ." : " " line[i]) }'
}
# The licence files of the crate in directory $1.
licence_files() {
    find "$1" -maxdepth 1 -type f \( -iname 'licen[cs]e*' -o -iname 'copying*' -o -iname 'unlicense*' \
        -o -iname 'copyright*' \) | LC_ALL=C sort
}
declare -A licence_text=()   # licence name -> file holding its full text
crate_paragraphs=""
while IFS='|' read -r name version spdx; do
    dir=$(jq -r --arg n "$name" --arg v "$version" \
        '.packages[] | select(.name == $n and .version == $v) | .manifest_path' <<<"$metadata" | head -n1)
    [ -n "$dir" ] || die "crate $name $version is not in cargo metadata"
    dir=$(dirname "$dir")
    mapfile -t files < <(licence_files "$dir")
    # Copyright lines as the crate's licence files state them (not the Apache template's).
    holders=""
    if [ ${#files[@]} -gt 0 ]; then
        holders=$({ grep -h -i -E '^[[:space:]]*copyright[[:space:]]+(\(c\)|©|[0-9])' "${files[@]}" || true; } |
                      grep -v -e '\[yyyy\]' -e '{yyyy}' |
                      sed -E -e 's/^[[:space:]]*copyright[[:space:]]+((\(c\)|©)[[:space:]]*)?//I' -e 's/[[:space:]]*$//' |
                      awk '!seen[$0]++' || true)
    fi
    if [ -z "$holders" ]; then
        authors=$(jq -r --arg n "$name" --arg v "$version" \
            '.packages[] | select(.name == $n and .version == $v) | .authors | join(", ")' <<<"$metadata" | head -n1)
        holders="the $name developers${authors:+ ($authors)}"
    fi
    lic=$(dep5_license "$spdx")
    crate_paragraphs+=$'\n'"Files: rust-crates/$name-$version/*"$'\n'"Copyright: $(sed '2,$s/^/ /' <<<"$holders")"$'\n'"License: $lic"$'\n'
    # Licences beyond Expat and Apache-2.0: their text, from this crate's files.
    for token in $(grep -o -E 'Zlib|Unicode-3\.0|Unlicense|LLVM-exception|[A-Za-z0-9.+-]+' <<<"$spdx" | sort -u); do
        case $token in
            MIT|Apache-2.0|OR|AND|WITH) continue ;;
            Zlib) marker="provided 'as-is', without any express or implied warranty" ;;
            Unicode-3.0) marker="UNICODE LICENSE V3" ;;
            Unlicense) marker="This is free and unencumbered software released into the public domain" ;;
            LLVM-exception) marker="LLVM Exceptions to the Apache 2.0 License" ;;
            # The BSD texts name their own holders: each crate's file is its own licence,
            # and one of them stands for the licence's paragraph (as DEP-5 has it).
            BSD-3-Clause) marker="Neither the name" ;;
            BSD-2-Clause) marker="Redistribution and use in source and binary forms" ;;
            *) die "crate $name $version is under '$token', which $0 has no licence text for: add it" ;;
        esac
        [ -n "${licence_text[$token]:-}" ] && continue
        f=$( [ ${#files[@]} -gt 0 ] && grep -l -F "$marker" "${files[@]}" || true)
        if [ "$token" = BSD-2-Clause ]; then
            # The two-clause text: the redistribution terms without a third clause.
            f=$(for x in $f; do grep -q -F "Neither the name" "$x" || echo "$x"; done)
        fi
        f=$(head -n1 <<<"$f")
        [ -n "$f" ] || die "crate $name $version is under $token but ships no file with its text"
        licence_text[$token]=$f
    done
done <<<"$crates"

{
    cat <<EOF2
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tmemd
Comment: tmemd and tmem are statically linked with the Rust crates of the
 rust-crates/ paragraphs below, from crates.io; each is under its own licence,
 as the crate declares it, with the copyright lines of its licence files.

Files: *
Copyright: $year the tmemd contributors
License: Expat or Apache-2.0
$crate_paragraphs
License: Expat
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the "Software"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
 SOFTWARE.

License: Apache-2.0
 On Debian systems the full text of the Apache License, Version 2.0, is in
 /usr/share/common-licenses/Apache-2.0.
EOF2
    for token in $(printf '%s\n' "${!licence_text[@]}" | LC_ALL=C sort); do
        f=${licence_text[$token]}
        echo
        case $token in
            LLVM-exception)
                echo "License: Apache-2.0 with LLVM-exception"
                echo " The Apache License, Version 2.0 (/usr/share/common-licenses/Apache-2.0),"
                echo " with the following exception (from ${f#"$(dirname "$(dirname "$f")")"/}):"
                echo " ."
                sed -n '/LLVM Exceptions to the Apache 2.0 License/,$p' "$f" >"$OUT/llvm-exception.txt"
                dep5_text "$OUT/llvm-exception.txt"
                rm -f "$OUT/llvm-exception.txt"
                ;;
            *)
                echo "License: $token"
                dep5_text "$f"
                ;;
        esac
    done
} >"$DOC/copyright"
chmod 0644 "$DOC/copyright"

# Depends: from the libraries the binaries link, as dpkg-shlibdeps sees them; without
# dpkg-dev, the highest glibc symbol version the binaries use (libgcc_s is needed for
# unwinding and has been at 4.2 since long before glibc 2.34).
if command -v dpkg-shlibdeps >/dev/null; then
    shl=$OUT/shlibdeps
    rm -rf "$shl" && mkdir -p "$shl/debian"
    printf 'Source: tmemd\n\nPackage: tmemd\nArchitecture: any\n' >"$shl/debian/control"
    depends=$(cd "$shl" && dpkg-shlibdeps -O "$ROOT/usr/sbin/tmemd" "$ROOT/usr/sbin/tmem" 2>/dev/null |
                  sed -n 's/^shlibs:Depends=//p')
else
    glibc=$(readelf --dyn-syms -W "$ROOT"/usr/sbin/* | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' |
                sort -V | tail -1)
    depends="libc6 (>= ${glibc:?no glibc version found}), libgcc-s1 (>= 4.2)"
fi
[ -n "$depends" ] || die "could not compute Depends"

# Maintainer scripts (packaging/debian/: enable, start on install, try-restart on upgrade,
# stop on remove, clean up on purge) and the conffile list.
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
    "$ROOT/DEBIAN/"
echo /etc/tmemd/tmemd.toml >"$ROOT/DEBIAN/conffiles"

installed_size=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
cat >"$ROOT/DEBIAN/control" <<EOF
Package: tmemd
Version: $VERSION
Architecture: $ARCH
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Suggests: prometheus-node-exporter
Section: admin
Priority: optional
Description: transcendent memory for Xen guests, as a dom0 daemon
 tmemd keeps pages that Xen guests can afford to lose (clean page cache) or
 must get back (swap) in otherwise idle dom0 memory, and serves each guest over
 a shared-memory ring negotiated in xenstore, as Xen's in-hypervisor tmem did
 before it was removed. Persistent pages survive a restart or an upgrade of the
 daemon through systemd's file-descriptor store.
 .
 This package contains the daemon tmemd with its systemd unit, and tmem, the
 administration command in the spirit of xl tmem-*.
EOF
(cd "$ROOT" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z |
     xargs -0 md5sum) >"$ROOT/DEBIAN/md5sums"
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/conffiles" "$ROOT/DEBIAN/md5sums"

find "$ROOT" -type d -exec chmod 0755 {} +
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
rm -f "$DEB"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
