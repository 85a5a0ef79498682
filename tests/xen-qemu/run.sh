#!/usr/bin/env bash
# tests/xen-qemu/run.sh: the real-Xen test layer (DESIGN.md §6, layer 4).
#
# Boots Debian 12's Xen 4.17 hypervisor with a Linux dom0 inside QEMU (TCG), with tmemd and
# the `tmem` CLI in dom0 and `tmem-guest` in PV domUs, then runs scenario scripts in dom0.
# Everything comes from Debian packages (apt-get download + dpkg -x) and from this workspace's
# release binaries. Exit 0 only if every requested scenario printed its PASS marker.
#
# usage: tests/xen-qemu/run.sh [SCENARIO...]          (default: see TMEMXQ_SCENARIOS)
#
# Environment:
#   TMEMXQ_SCENARIOS   space/comma separated list, or "auto" (default): the real-Xen scenarios
#                      if the built tmem-guest has `--transport`, otherwise "smoke". "swap" means
#                      the swap scenarios (swap-compare swapdisk); "auto" runs swapdisk, not swap-compare.
#   TMEMXQ_CACHE       downloads, extracted packages, images, logs  (default /var/tmp/tmem-xen-qemu)
#   TMEMXQ_TARGET_DIR  cargo target dir for the release binaries    (default $CARGO_TARGET_DIR or ./target)
#   TMEMXQ_NO_BUILD=1  do not run cargo; use the binaries already in the target dir
#   TMEMXQ_TOTAL_TIMEOUT  everything after the cargo build, seconds (default 900)
#   TMEMXQ_DOM0_TIMEOUT   QEMU start -> dom0 control plane up (default 240)
#   TMEMXQ_SCENARIO_TIMEOUT  per scenario, seconds (default: the scenario's "# txq-timeout: N"
#                      line, else 300)
#   TMEMXQ_QEMU_CPU    QEMU -cpu under TCG (default qemu64, or qemu64,+npt when migrate-live runs:
#                      emulated nested paging gives Xen HAP, which PVH domUs and so
#                      `xl migrate` need; "max" needs ",-smap")
#   TMEMXQ_QEMU_MEM, TMEMXQ_DOM0_MEM  MiB for QEMU and dom0 (default 3072 and 1024; 4096 and
#                      2048 when a swap scenario runs: spill files and page memory live in dom0)
#   TMEMXQ_KEEP=1      keep QEMU's staging trees after the run
#   TMEMXQ_SD_DOM0_MEM MiB for dom0 in the systemd boot (default 1536: its root is in RAM)
#   TXQ_*              passed into dom0: every scenario sees them (e.g. TXQ_SWAP_KINDS)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${TMEMXQ_CACHE:-/var/tmp/tmem-xen-qemu}
TARGET_DIR=${TMEMXQ_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target}}
DOM0_TIMEOUT=${TMEMXQ_DOM0_TIMEOUT:-240}
QEMU_CPU=${TMEMXQ_QEMU_CPU:-qemu64}
XENVER=4.17
ALL_REAL="first-boot two-guests restart destroy transfer swapdisk migrate systemd"
# Scenarios that need dom0 to run systemd as PID 1: they get a boot of their own (a Debian 12
# root made with mmdebstrap, dom0/init-systemd), after the busybox boot of the others.
SYSTEMD_SCENARIOS="systemd"
# Known but not in "auto": swap-compare (a benchmark) takes about 12 minutes under TCG;
# save-probe (reports what xl save / xl restore do to a tmem guest today; fails only if it cannot run);
# migrate-live (issue 12: xl migrate to localhost of PVH domUs using tmem; boots with -cpu qemu64,+npt);
# xen-path (issue 14: Xen against local transport, spinning against not, in one dom0 and run).
SWAP="swap-compare swapdisk"

START=$SECONDS
stamp() { printf '[xen-qemu %4ss]' "$((SECONDS - START))"; }
say() { echo "$(stamp) $*"; }

QEMU_PID=
WATCHDOG_PID=
SERIAL=
stop_qemu() {
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.3; done
        kill -9 "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    QEMU_PID=
}
on_exit() {
    local rc=$?
    stop_qemu
    if [ -n "$WATCHDOG_PID" ]; then kill "$WATCHDOG_PID" 2>/dev/null || true; fi
    exit "$rc"
}
trap on_exit EXIT
trap 'die "interrupted (signal)"' INT TERM HUP
trap 'die "run.sh line $LINENO: command failed: $BASH_COMMAND"' ERR

# Fail loudly: the reason, the tail of the serial log, and where the whole log is.
die() {
    trap - INT TERM HUP
    echo
    echo "$(stamp) FAIL: $*" >&2
    if [ -n "$SERIAL" ] && [ -s "$SERIAL" ]; then
        echo "----- last 120 lines of $SERIAL -----" >&2
        tail -n 120 "$SERIAL" | tr -d '\r' >&2
        echo "----- end of serial log tail (full log: $SERIAL) -----" >&2
    fi
    echo "$(stamp) RESULT: FAIL ($*)" >&2
    stop_qemu
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, mknod of /dev/console in the images)"
case "$CACHE" in *,*|*' '*) die "TMEMXQ_CACHE must not contain ',' or spaces (QEMU multiboot module list)";; esac
mkdir -p "$CACHE"/{debs,logs}
# Two runs on one cache would overwrite each other's images and serial log: one at a time. The
# lock is held until this script (and QEMU, which inherits it) exits.
exec 9>"$CACHE/.lock"
flock -n 9 || die "another run.sh is using $CACHE: wait for it, or set TMEMXQ_CACHE to a directory of your own (copy debs/ into it to skip the download)"

# ------------------------------------------------------------------ scenarios
SCENARIOS=${*:-${TMEMXQ_SCENARIOS:-auto}}
SCENARIOS=$(echo "$SCENARIOS" | tr ',' ' ' | sed "s/\(^\| \)swap\( \|\$\)/ $SWAP /g")
wants_swap() { case " $SCENARIOS " in *" swap-compare "*|*" swapdisk "*|*" migrate "*|*" migrate-live "*) return 0;; esac; return 1; }
# migrate-live needs PVH domUs, so HAP: let TCG emulate AMD nested paging (PV domUs do not mind).
case " $SCENARIOS " in *" migrate-live "*) [ -n "${TMEMXQ_QEMU_CPU:-}" ] || QEMU_CPU=qemu64,+npt;; esac

# ------------------------------------------------------------------ binaries
BIN=$TARGET_DIR/release
if [ -z "${TMEMXQ_NO_BUILD:-}" ]; then
    say "building release binaries (tmemd, tmem, tmem-guest) into $TARGET_DIR"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR timeout 1800 nice cargo build --release --quiet \
        -p tmemd -p tmem-cli -p tmem-guest -p tmem-gen-docs) || die "cargo build --release failed"
    # memhog runs in the busybox domU, which has no glibc of its own version: link it statically.
    say "building a static memhog (for the domU image)"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR RUSTFLAGS="-C target-feature=+crt-static" timeout 1800 \
        nice cargo build --release --quiet -p tmem-guest --bin memhog --target x86_64-unknown-linux-gnu) \
        || die "cargo build of the static memhog failed"
fi
MEMHOG=$TARGET_DIR/x86_64-unknown-linux-gnu/release/memhog
for b in tmemd tmem tmem-guest; do [ -x "$BIN/$b" ] || die "missing $BIN/$b (build it or unset TMEMXQ_NO_BUILD)"; done
if wants_swap && [ ! -x "$MEMHOG" ]; then
    die "missing $MEMHOG (the swap scenarios need the static memhog; build it or unset TMEMXQ_NO_BUILD)"
fi
if [ "$SCENARIOS" = auto ]; then
    if "$BIN/tmem-guest" --help 2>&1 | grep -q -- '--transport'; then
        SCENARIOS=$ALL_REAL
    else
        SCENARIOS=smoke
        say "NOTE: tmem-guest has no --transport option yet (no Xen transport): running only 'smoke'"
    fi
fi
for s in $SCENARIOS; do
    [ -f "$HERE/scenarios/$s.sh" ] || die "unknown scenario '$s' (have: $(cd "$HERE/scenarios" && ls ./*.sh | sed 's|./||; s|\.sh||' | grep -v '^lib$' | tr '\n' ' '))"
done
# Split: the busybox boot runs all but the systemd scenarios, the systemd boot those.
BB_SCENARIOS="" SD_SCENARIOS=""
for s in $SCENARIOS; do
    case " $SYSTEMD_SCENARIOS " in
        *" $s "*) SD_SCENARIOS="$SD_SCENARIOS $s" ;;
        *) BB_SCENARIOS="$BB_SCENARIOS $s" ;;
    esac
done
BB_SCENARIOS=${BB_SCENARIOS# } SD_SCENARIOS=${SD_SCENARIOS# }
say "scenarios: $SCENARIOS${SD_SCENARIOS:+ (in a systemd boot: $SD_SCENARIOS)}"
if [ -n "$SD_SCENARIOS" ]; then
    [ -x "$BIN/tmem-gen-docs" ] || die "missing $BIN/tmem-gen-docs (the systemd boot installs the .deb; build it or unset TMEMXQ_NO_BUILD)"
fi
# Each scenario's time limit: TMEMXQ_SCENARIO_TIMEOUT, or its "# txq-timeout: N" line, or 300 s.
scenario_timeout() {
    local t
    t=$(sed -n 's/^# txq-timeout: *\([0-9][0-9]*\).*/\1/p' "$HERE/scenarios/$1.sh" | head -n1)
    echo "${TMEMXQ_SCENARIO_TIMEOUT:-${t:-300}}"
}
SUM=0
for s in $SCENARIOS; do SUM=$((SUM + $(scenario_timeout "$s"))); done
# The default total covers the longest run the per-scenario limits allow, and at least 900 s.
# A second boot (systemd) adds its dom0 limit and its image build (mmdebstrap on first use).
[ -z "$SD_SCENARIOS" ] || SUM=$((SUM + DOM0_TIMEOUT + 300))
TOTAL_TIMEOUT=${TMEMXQ_TOTAL_TIMEOUT:-$(( SUM + DOM0_TIMEOUT + 240 > 900 ? SUM + DOM0_TIMEOUT + 240 : 900 ))}

# From here on (packages, images, QEMU, scenarios) the run has a hard deadline, enforced
# from outside the main loop too. The cargo build above has its own limit.
( sleep "$TOTAL_TIMEOUT" && echo "$(stamp) total timeout ${TOTAL_TIMEOUT}s reached" >&2 \
    && kill -TERM $$ ) 2>/dev/null 9>&- &   # 9>&-: the sleeper must not hold the cache lock after we exit
WATCHDOG_PID=$!

# ------------------------------------------------------------------ packages
export DEBIAN_FRONTEND=noninteractive
APT_STAMP=$CACHE/.apt-updated
apt_update() { say "apt-get update"; timeout 300 apt-get update -qq || die "apt-get update failed"; touch "$APT_STAMP"; }
if ! command -v qemu-system-x86_64 >/dev/null; then
    [ -e "$APT_STAMP" ] || apt_update
    say "installing qemu-system-x86 (--no-install-recommends)"
    timeout 600 apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null \
        || die "cannot install qemu-system-x86"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found"

# The kernel package is whatever linux-image-amd64 currently points to.
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1; }
KPKG=$(kernel_pkg)
if [ -z "$KPKG" ]; then apt_update; KPKG=$(kernel_pkg); fi
[ -n "$KPKG" ] || die "apt does not know linux-image-amd64 (is this Debian 12 with a main mirror?)"
KVER=${KPKG#linux-image-}
PKGS="xen-hypervisor-$XENVER-amd64 xen-utils-$XENVER xen-utils-common xenstore-utils
 libxenmisc$XENVER libxenstore4 libxentoolcore1 libxentoollog1 libxencall1 libxenevtchn1
 libxenforeignmemory1 libxengnttab1 libxendevicemodel1 libxenhypfs1
 libc6 libgcc-s1 libyajl2 libuuid1 zlib1g liblzma5 libzstd1 busybox-static
 jq libjq1 libonig5 $KPKG"
have_deb() { compgen -G "$CACHE/debs/${1}_*.deb" >/dev/null; }
missing_debs() { local p m=; for p in $PKGS; do have_deb "$p" || m="$m $p"; done; echo "$m"; }
MISSING=$(missing_debs)
if [ -n "$MISSING" ]; then
    say "downloading:$MISSING"
    chmod 777 "$CACHE/debs"   # apt's _apt user writes there
    # shellcheck disable=SC2086
    if ! (cd "$CACHE/debs" && timeout 600 apt-get download -q $MISSING >"$CACHE/logs/apt-download.log" 2>&1); then
        apt_update
        # shellcheck disable=SC2086
        (cd "$CACHE/debs" && timeout 600 apt-get download -q $MISSING >"$CACHE/logs/apt-download.log" 2>&1) \
            || { cat "$CACHE/logs/apt-download.log" >&2; die "apt-get download failed"; }
    fi
    MISSING=$(missing_debs)
    [ -z "$MISSING" ] || die "still missing after download:$MISSING"
fi

# Extract once per distinct set of .debs (newest version of each package).
DEBS=$(for p in $PKGS; do ls -v "$CACHE/debs/${p}"_*.deb | tail -n1; done)
ROOT=$CACHE/root
SIG=$(echo "$DEBS" | md5sum | cut -d' ' -f1)
if [ "$(cat "$ROOT/.sig" 2>/dev/null)" != "$SIG" ]; then
    say "extracting $(echo "$DEBS" | wc -l) packages into $ROOT"
    rm -rf "$ROOT"; mkdir -p "$ROOT"
    for d in $DEBS; do dpkg -x "$d" "$ROOT" || die "dpkg -x $d"; done
    for d in $DEBS; do dpkg-deb -f "$d" Package Version | paste -sd' '; done > "$ROOT/.versions"
    echo "$SIG" > "$ROOT/.sig"
fi

# ------------------------------------------------------------------ images
RUN=$CACHE/run
rm -rf "$RUN"; mkdir -p "$RUN"
SERIAL=$CACHE/logs/serial.log
: > "$SERIAL"
BB=$ROOT/bin/busybox
[ -x "$BB" ] || die "busybox-static did not provide $BB"
KMODS=$ROOT/lib/modules/$KVER/kernel/drivers/xen
zcat "$ROOT/boot/xen-$XENVER-amd64.gz" > "$RUN/xen"      # multiboot wants the plain ELF
cp "$ROOT/boot/vmlinuz-$KVER" "$RUN/vmlinuz"

# A tree with busybox and its applets, an empty /dev/console and the usual mount points.
new_tree() {
    local t=$1 a
    mkdir -p "$t"/{bin,sbin,dev,proc,sys,run,tmp,etc,root,lib/modules,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,usr/lib/x86_64-linux-gnu}
    cp "$BB" "$t/bin/busybox"
    for a in $("$BB" --list); do [ -e "$t/bin/$a" ] || ln -s busybox "$t/bin/$a"; done
    mknod -m 600 "$t/dev/console" c 5 1
    mkdir -p "$t/var"
    ln -s ../run "$t/var/run"     # libxenstore's socket is /var/run/xenstored/socket
}
# Copy an executable and every shared library it loads (resolved on this Debian 12 host,
# whose glibc is the guests'), plus libgcc_s which glibc dlopens for thread cancellation.
add_exe() {
    local t=$1 exe=$2 dest=$3 lib
    install -D -m 755 "$exe" "$t$dest"
    # release builds carry debug info (tens of MB); the images don't need it
    if command -v strip >/dev/null; then strip --strip-debug "$t$dest"; fi
    for lib in $(ldd "$exe" | awk '/=> \//{print $3} /^\t\/[^ ]*ld-linux/{print $1}') \
               /lib/x86_64-linux-gnu/libgcc_s.so.1; do
        [ -e "$t$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$t$lib"
    done
}
add_module() { cp "$(find "$ROOT/lib/modules/$KVER" -name "$2.ko" | head -n1)" "$1/lib/modules/" || die "module $2 not found"; }
pack() { (cd "$1" && find . | "$BB" cpio -o -H newc 2>/dev/null) | gzip -1 > "$2"; }

# domU: busybox, Xen guest modules, xenstore clients (via /dev/xen/xenbus), Xen libraries (in
# case the guest transport loads them), tmem-guest; for the swap job (guest/swapjob.sh) the
# block frontend, zram with lz4, and a static memhog.
U=$RUN/domu
new_tree "$U"
for m in xen-evtchn xen-gntdev xen-gntalloc xen-blkfront zsmalloc zram lz4_compress lz4; do
    add_module "$U" "$m"
done
cp -a "$ROOT"/lib/x86_64-linux-gnu/. "$U/lib/x86_64-linux-gnu/"
cp -a "$ROOT"/lib64/. "$U/lib64/"
cp -a "$ROOT"/usr/lib/x86_64-linux-gnu/libxen*.so* "$U/usr/lib/x86_64-linux-gnu/"
for f in "$ROOT"/usr/bin/xenstore*; do [ -L "$f" ] || cp -a "$f" "$U/usr/bin/"; done
add_exe "$U" "$BIN/tmem-guest" /usr/bin/tmem-guest
if [ -x "$MEMHOG" ]; then
    install -m 755 "$MEMHOG" "$U/usr/bin/memhog"
    if command -v strip >/dev/null; then strip --strip-debug "$U/usr/bin/memhog"; fi
fi
install -m 755 "$HERE/guest/init" "$U/init"
install -m 644 "$HERE/guest/swapjob.sh" "$U/swapjob.sh"
pack "$U" "$RUN/domu.cpio.gz"

# dom0: busybox, all Xen drivers we use, the Xen tools and daemons, jq, tmemd, tmem, the
# scenarios, and the domU kernel + image.
D=$RUN/dom0
new_tree "$D"
# loop and xen-blkback: the swap comparison attaches a disk image the ordinary way (phy).
for m in xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc loop xen-blkback; do add_module "$D" "$m"; done
mkdir -p "$D"/{usr/lib/xen-$XENVER,var/log/xen/console,var/lib/xen,etc/xen/scripts,boot,tmemxq}
cp -a "$ROOT"/lib/x86_64-linux-gnu/. "$D/lib/x86_64-linux-gnu/"
cp -a "$ROOT"/lib64/. "$D/lib64/"
cp -a "$ROOT"/usr/lib/x86_64-linux-gnu/*.so* "$D/usr/lib/x86_64-linux-gnu/"
cp -a "$ROOT/usr/lib/xen-$XENVER/bin" "$D/usr/lib/xen-$XENVER/"
rm -f "$D/usr/lib/xen-$XENVER/bin/"{pygrub,xenpvnetboot,test-*}
for f in "$ROOT"/usr/bin/xenstore*; do [ -L "$f" ] || cp -a "$f" "$D/usr/bin/"; done
cp -a "$ROOT/usr/bin/jq" "$D/usr/bin/jq"
cp -a "$ROOT/etc/xen/xl.conf" "$D/etc/xen/"
# libxl runs /etc/xen/scripts/block for a phy disk; Debian's needs bash and more: a stand-in.
install -m 755 "$HERE/dom0/block" "$D/etc/xen/scripts/block"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$D/etc/passwd"
printf 'root:x:0:\n' > "$D/etc/group"
add_exe "$D" "$BIN/tmemd" /usr/sbin/tmemd
add_exe "$D" "$BIN/tmem" /usr/sbin/tmem
add_exe "$D" "$BIN/tmem-guest" /usr/bin/tmem-guest   # xen-path: the local transport in dom0
install -m 755 "$HERE/dom0/init" "$D/init"
cp "$HERE"/scenarios/*.sh "$D/tmemxq/"
echo "$BB_SCENARIOS" > "$D/tmemxq/scenarios"
# TXQ_* settings from the host reach the scenarios (dom0's /init sources this file).
env | grep '^TXQ_[A-Za-z0-9_]*=' | sed "s/'/'\\\\''/g; s/=\(.*\)/='\1'/; s/^/export /" > "$D/tmemxq/env" || true
# The domU kernel: Xen's PV builder would decompress the XZ payload of the bzImage inside
# dom0 (under TCG) at every `xl create`; hand it the ELF instead, decompressed once here.
if [ ! -s "$ROOT/.vmlinux" ] && command -v xz >/dev/null; then
    off=$(LC_ALL=C grep -obUa $'\xfd7zXZ' "$RUN/vmlinuz" | head -n1 | cut -d: -f1)
    if [ -n "$off" ]; then tail -c +$((off + 1)) "$RUN/vmlinuz" | xz -dc 2>/dev/null > "$ROOT/.vmlinux.tmp" || true; fi   # xz: "trailing garbage"
    if [ "$(head -c4 "$ROOT/.vmlinux.tmp" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; then
        mv "$ROOT/.vmlinux.tmp" "$ROOT/.vmlinux"
    else
        rm -f "$ROOT/.vmlinux.tmp"; say "note: could not extract an ELF vmlinux; domUs boot the bzImage"
    fi
fi
if [ -s "$ROOT/.vmlinux" ] && [ -z "${TMEMXQ_DOMU_BZIMAGE:-}" ]; then
    cp "$ROOT/.vmlinux" "$D/boot/vmlinuz"
else
    cp "$RUN/vmlinuz" "$D/boot/vmlinuz"
fi
cp "$RUN/domu.cpio.gz" "$D/boot/domu.cpio.gz"
pack "$D" "$RUN/dom0.cpio.gz"

# ------------------------------------------------------------------ systemd image
# For the systemd scenarios dom0 is a Debian 12 system with systemd as PID 1: a root made by
# mmdebstrap (cached per package list), with the Xen tools, modules, domU image and scenarios
# of the busybox image added, and tmemd only as its .deb (installed by the scenario, with
# dpkg, inside dom0). dom0/init-systemd brings Xen's control plane up, then execs systemd,
# which starts dom0/run-scenarios as tmemxq.service.
SD_PKGS="systemd init-system-helpers jq busybox-static procps"
build_systemd_image() {
    local tar sig S deb_out
    command -v mmdebstrap >/dev/null || {
        [ -e "$APT_STAMP" ] || apt_update
        say "installing mmdebstrap (--no-install-recommends)"
        timeout 600 apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null \
            || die "cannot install mmdebstrap"
    }
    sig=$(echo "bookworm $SD_PKGS v1" | md5sum | cut -c1-12)
    tar=$CACHE/sdroot-$sig.tar
    if [ ! -s "$tar" ]; then
        say "mmdebstrap: a Debian 12 root with $SD_PKGS (once per package list; about a minute)"
        rm -f "$CACHE"/sdroot-*.tar
        timeout 900 mmdebstrap --variant=minbase --include="$(echo "$SD_PKGS" | tr ' ' ',')" \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/info/*' \
            bookworm "$CACHE/sdroot.tmp.tar" "deb http://deb.debian.org/debian bookworm main" \
            "deb http://deb.debian.org/debian bookworm-updates main" \
            "deb http://deb.debian.org/debian-security bookworm-security main" \
            >"$CACHE/logs/mmdebstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/logs/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $CACHE/logs/mmdebstrap.log)"; }
        mv "$CACHE/sdroot.tmp.tar" "$tar"
    fi
    say "building the tmemd .deb (scripts/build-deb.sh --no-build)"
    deb_out=$RUN/deb
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR scripts/build-deb.sh --no-build --out "$deb_out" >/dev/null) \
        || die "scripts/build-deb.sh failed"
    S=$RUN/dom0sd
    rm -rf "$S"; mkdir -p "$S"
    tar -C "$S" -xf "$tar" || die "cannot unpack $tar"
    [ -e "$S/dev/console" ] || mknod -m 600 "$S/dev/console" c 5 1
    # From the busybox image: Xen's tools and libraries (never replacing Debian's own files),
    # modules, xl's config and block script, the domU kernel and image, the scenarios.
    cp -an "$D/lib/x86_64-linux-gnu/." "$S/lib/x86_64-linux-gnu/"
    cp -an "$D/usr/lib/x86_64-linux-gnu/." "$S/usr/lib/x86_64-linux-gnu/"
    cp -a "$D/usr/lib/xen-$XENVER" "$S/usr/lib/"
    cp -a "$D"/usr/bin/xenstore* "$S/usr/bin/"
    mkdir -p "$S/lib/modules" "$S/etc/xen/scripts" "$S/var/lib/xen" "$S/var/log/xen/console"
    cp -a "$D"/lib/modules/*.ko "$S/lib/modules/"
    cp -a "$D/etc/xen/." "$S/etc/xen/"
    cp -a "$D/boot/." "$S/boot/"
    cp -a "$D/tmemxq" "$S/"
    echo "$SD_SCENARIOS" > "$S/tmemxq/scenarios"
    cp "$deb_out"/tmemd_*.deb "$S/tmemxq/tmemd.deb"
    install -m 755 "$HERE/dom0/init-systemd" "$S/init"
    install -m 755 "$HERE/dom0/run-scenarios" "$S/tmemxq/run-scenarios"
    # The runner, on the console once the system is up.
    cat > "$S/etc/systemd/system/tmemxq.service" <<'UNIT'
[Unit]
Description=tmemd xen-qemu scenarios
After=multi-user.target

[Service]
Type=exec
ExecStart=/tmemxq/run-scenarios
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/console
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
UNIT
    mkdir -p "$S/etc/systemd/system/multi-user.target.wants"
    ln -sf ../tmemxq.service "$S/etc/systemd/system/multi-user.target.wants/tmemxq.service"
    # Not wanted on a throwaway test system: logins on the console, apt's and dpkg's timers.
    for u in getty.target serial-getty@.service console-getty.service apt-daily.timer \
        apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null "$S/etc/systemd/system/$u"
    done
    echo tmem-dom0 > "$S/etc/hostname"
    : > "$S/etc/machine-id"
    pack_zstd "$S" "$RUN/dom0-systemd.cpio"
    [ -n "${TMEMXQ_KEEP:-}" ] || rm -rf "$S"
    say "image: dom0 (systemd) $(du -h "$RUN/dom0-systemd.cpio" | cut -f1)"
}
# A big root: zstd decompresses far faster than gzip under TCG (Debian's kernel reads both).
pack_zstd() {
    if command -v zstd >/dev/null; then
        (cd "$1" && find . | "$BB" cpio -o -H newc 2>/dev/null) | zstd -q -3 -T0 > "$2"
    else
        (cd "$1" && find . | "$BB" cpio -o -H newc 2>/dev/null) | gzip -1 > "$2"
    fi
}
if [ -n "$SD_SCENARIOS" ]; then build_systemd_image; fi
[ -n "${TMEMXQ_KEEP:-}" ] || rm -rf "$D" "$U"
say "images: dom0 $(du -h "$RUN/dom0.cpio.gz" | cut -f1), domU $(du -h "$RUN/domu.cpio.gz" | cut -f1), kernel $KVER"

# ------------------------------------------------------------------ boot
# Xen on com1 (the serial log); dom0 on hvc0, which Xen forwards to com1.
if wants_swap; then QEMU_MEM=${TMEMXQ_QEMU_MEM:-4096} DOM0_MEM=${TMEMXQ_DOM0_MEM:-2048}
else QEMU_MEM=${TMEMXQ_QEMU_MEM:-3072} DOM0_MEM=${TMEMXQ_DOM0_MEM:-1024}; fi
DOM0_ARGS="console=hvc0 earlyprintk=xen"
BOOT0=$SECONDS
: > "$CACHE/logs/markers.txt"

# Wait for a marker (a fixed string at the start of a serial line, after any timestamp).
# Any failure marker, panic or QEMU exit ends the wait with a reason.
expect() {
    local marker=$1 limit=$2 what=$3 t0=$SECONDS line
    while :; do
        if line=$(grep -a -m1 -F -- "$marker" "$SERIAL" 2>/dev/null); then
            say "seen: $(echo "$line" | tr -d '\r' | sed 's/^.*\(TXQ-\)/\1/') (+$((SECONDS - BOOT0))s after QEMU start)"
            return 0
        fi
        if line=$(grep -a -m1 'TXQ-FAIL' "$SERIAL" 2>/dev/null); then
            sleep 2   # let the scenario's diagnostics reach the log
            die "waiting for '$marker' ($what): dom0 reported $(echo "$line" | tr -d '\r' | sed 's/^.*TXQ-FAIL/TXQ-FAIL/')"
        fi
        if grep -a -q -E 'Panic on CPU|Kernel panic' "$SERIAL"; then
            sleep 2; die "waiting for '$marker' ($what): panic on the serial console"
        fi
        kill -0 "$QEMU_PID" 2>/dev/null || die "waiting for '$marker' ($what): QEMU exited"
        [ $((SECONDS - t0)) -lt "$limit" ] || die "timeout: '$marker' ($what) not seen within ${limit}s"
        sleep 0.5
    done
}

# boot INITRD DOM0_MIB SCENARIOS...: boot Xen with this dom0 image, wait for each scenario's
# markers on the serial log ($SERIAL), then for dom0 to reboot (QEMU exits).
boot() {
    local initrd=$1 dom0_mem=$2 s xen_args
    shift 2
    xen_args="console=com1 com1=115200,8n1 console_timestamps=boot loglvl=all guest_loglvl=all dom0_mem=${dom0_mem}M,max:${dom0_mem}M dom0_max_vcpus=2 bootscrub=false"
    : > "$SERIAL"
    say "booting Xen in QEMU (TCG, -cpu $QEMU_CPU, -m $QEMU_MEM, dom0 $dom0_mem MiB, $(basename "$initrd")); serial log: $SERIAL"
    qemu-system-x86_64 -accel tcg,thread=multi -cpu "$QEMU_CPU" -m "$QEMU_MEM" -smp 2 \
        -nodefaults -no-reboot -display none -monitor none -serial "file:$SERIAL" \
        -kernel "$RUN/xen" -append "$xen_args" \
        -initrd "$RUN/vmlinuz $DOM0_ARGS,$initrd" &
    QEMU_PID=$!
    BOOT0=$SECONDS
    expect "TXQ-DOM0-UP" "$DOM0_TIMEOUT" "Xen + dom0 control plane"
    for s in "$@"; do
        expect "TXQ-BEGIN $s" 120 "scenario $s starts"
        expect "TXQ-PASS $s" "$(scenario_timeout "$s")" "scenario $s passes"
    done
    expect "TXQ-END status=ok" 60 "dom0 finished"
    # dom0 reboots; Xen restarts the machine and QEMU exits (-no-reboot). Don't wait long.
    for _ in $(seq 1 40); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.5; done
    stop_qemu
    grep -a -h 'TXQ-' "$SERIAL" | tr -d '\r' | sed 's/^.*\(TXQ-\)/\1/' >> "$CACHE/logs/markers.txt"
}

QEMU_SECONDS=0
if [ -n "$BB_SCENARIOS" ]; then
    # shellcheck disable=SC2086
    boot "$RUN/dom0.cpio.gz" "$DOM0_MEM" $BB_SCENARIOS
    QEMU_SECONDS=$((SECONDS - BOOT0))
fi
if [ -n "$SD_SCENARIOS" ]; then
    SERIAL=$CACHE/logs/serial-systemd.log
    # Its root (about 250 MiB) lives in dom0's RAM, beside tmemd's 256 MiB of page memory.
    # shellcheck disable=SC2086
    boot "$RUN/dom0-systemd.cpio" "${TMEMXQ_SD_DOM0_MEM:-1536}" $SD_SCENARIOS
    QEMU_SECONDS=$((QEMU_SECONDS + SECONDS - BOOT0))
fi
say "RESULT: PASS ($SCENARIOS) in $((SECONDS - START))s total, ${QEMU_SECONDS}s in QEMU"
