# The domU's swap job (tests/xen-qemu), sourced by guest/init when the kernel command line
# has tmemxq.mode=swap. POSIX sh (busybox). Every line dom0 checks starts with TXQ-GUEST-;
# memhog's JSON lines go to the console as they come.
#
#   tmemxq.swapdev=DEV    a block device name (xvdb, xvdz, ...), or "zram": make /dev/zram0
#   tmemxq.swapsize=SIZE  zram only: its disksize (e.g. 512M)
#   tmemxq.swapwait=SECS  how long to wait for /dev/DEV (default 300)
#   tmemxq.args=...       memhog's arguments, commas for spaces
#
# swap_job returns memhog's exit code, or 20..25 when the swap device could not be set up or
# taken down (the line before says which).

secs() { cut -d. -f1 /proc/uptime; }
meminfo() { sed -n "s/^$1: *\([0-9]*\) kB/\1/p" /proc/meminfo; }
vmstat() { sed -n "s/^$1 //p" /proc/vmstat; }

# wait_block DEV SECONDS: wait for /dev/DEV to appear, woken by kernel uevents; the 1 s
# re-check covers a device added before the listener was bound. On timeout, print what the
# guest saw: the uevents, its block devices, its vbd entries in xenstore and blkfront's dmesg.
wait_block() {
    _dev=$1 _limit=$2
    [ -b "/dev/$_dev" ] && return 0
    rm -f /tmp/uevents && mkfifo /tmp/uevents
    exec 3<>/tmp/uevents
    uevent sh -c 'echo "$ACTION $SUBSYSTEM $DEVNAME"' >&3 2>/dev/null &
    _uev=$!
    : > /tmp/uevents.seen
    _t0=$(secs)
    _rc=0
    while [ ! -b "/dev/$_dev" ]; do
        if [ $(( $(secs) - _t0 )) -ge "$_limit" ]; then
            _rc=1
            break
        fi
        if read -t 1 _ev <&3; then echo "$_ev" >> /tmp/uevents.seen; fi
    done
    kill "$_uev" 2>/dev/null
    exec 3<&-
    [ $_rc = 0 ] && return 0
    echo "TXQ-GUEST-WARN /dev/$_dev did not appear within ${_limit}s; what the guest saw:"
    echo "  uevents: $(tail -n 20 /tmp/uevents.seen | tr '\n' ';')"
    echo "  /sys/block: $(ls /sys/block | tr '\n' ' ')"
    for _v in $(xenstore-list device/vbd 2>/dev/null); do
        _be=$(xenstore-read "device/vbd/$_v/backend" 2>/dev/null)
        echo "  device/vbd/$_v: state=$(xenstore-read "device/vbd/$_v/state" 2>/dev/null)" \
            "virtual-device=$(xenstore-read "device/vbd/$_v/virtual-device" 2>/dev/null)" \
            "backend=$_be backend-state=$(xenstore-read "$_be/state" 2>&1)"
    done
    [ -n "$(xenstore-list device/vbd 2>/dev/null)" ] || echo "  no device/vbd entries in xenstore"
    dmesg | grep -i -E 'blkfront|vbd|xvd|blkif' | tail -n 10 | sed 's/^/  dmesg: /'
    return 1
}

swap_job() {
    dev=$(cmdline swapdev)
    wait_s=$(cmdline swapwait)
    [ -n "$dev" ] || { echo "TXQ-GUEST-WARN tmemxq.swapdev= is missing"; return 20; }
    [ -x /usr/bin/memhog ] || { echo "TXQ-GUEST-WARN /usr/bin/memhog is missing from the image"; return 20; }
    echo "TXQ-GUEST-SWAPJOB dev=$dev memhog $args"
    if [ "$dev" = zram ]; then
        # No modules.dep here: zram needs zsmalloc; the lz4 crypto module needs lz4_compress.
        for m in zsmalloc zram lz4_compress lz4; do
            insmod "/lib/modules/$m.ko" || { echo "TXQ-GUEST-WARN insmod $m failed"; return 21; }
        done
        dev=zram0
        echo lz4 > /sys/block/zram0/comp_algorithm || { echo "TXQ-GUEST-WARN zram: lz4 refused"; return 21; }
        echo "$(cmdline swapsize)" > /sys/block/zram0/disksize \
            || { echo "TXQ-GUEST-WARN zram: disksize '$(cmdline swapsize)' refused"; return 21; }
    else
        insmod /lib/modules/xen-blkfront.ko || { echo "TXQ-GUEST-WARN insmod xen-blkfront failed"; return 21; }
        t0=$(secs)
        wait_block "$dev" "${wait_s:-300}" || return 20
        echo "TXQ-GUEST-DEV /dev/$dev appeared after $(( $(secs) - t0 ))s"
    fi
    size=$(blockdev --getsize64 "/dev/$dev")
    mkswap "/dev/$dev" >/tmp/mkswap.log 2>&1 || { cat /tmp/mkswap.log; echo "TXQ-GUEST-WARN mkswap /dev/$dev failed"; return 22; }
    # busybox swapon: -d discards the whole device once and every page as swap frees it.
    # It has no -p; with a single swap device the priority does not matter.
    discard=once+pages
    if ! swapon -d "/dev/$dev" 2>/tmp/swapon.log; then
        cat /tmp/swapon.log
        discard=none
        swapon "/dev/$dev" || { echo "TXQ-GUEST-WARN swapon /dev/$dev failed"; return 23; }
    fi
    # 0 here means the device offers no discard: swap cannot give freed pages back.
    echo "TXQ-GUEST-SWAP on dev=$dev size=$size discard=$discard discard_max_bytes=$(cat "/sys/block/$dev/queue/discard_max_bytes" 2>/dev/null)"
    echo "TXQ-GUEST-MEM MemTotal=$(meminfo MemTotal)kB MemAvailable=$(meminfo MemAvailable)kB SwapTotal=$(meminfo SwapTotal)kB"
    in0=$(vmstat pswpin) out0=$(vmstat pswpout) oom0=$(vmstat oom_kill)
    # shellcheck disable=SC2086
    memhog $args
    mrc=$?
    echo "TXQ-GUEST-MEMHOG rc=$mrc"
    echo "TXQ-GUEST-VMSTAT pswpin=$(( $(vmstat pswpin) - in0 )) pswpout=$(( $(vmstat pswpout) - out0 )) oom_kill=$(( $(vmstat oom_kill) - oom0 ))"
    echo "TXQ-GUEST-MEMINFO SwapTotal=$(meminfo SwapTotal)kB SwapFree=$(meminfo SwapFree)kB"
    t0=$(cut -d' ' -f1 /proc/uptime)
    swapoff "/dev/$dev"
    src=$?
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "TXQ-GUEST-SWAPOFF rc=$src seconds=$(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}') SwapTotal=$(meminfo SwapTotal)kB"
    [ $mrc = 0 ] || return $mrc
    [ $src = 0 ] || return 25
    return 0
}
