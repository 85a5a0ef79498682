# swap-compare: the same memhog job (SWAP_MEMHOG in lib.sh) in a domU of SWAP_GUEST_MIB,
# swapping to
#   phy:  a sparse disk image in dom0's tmpfs on a loop device, attached the ordinary way
#         (xl `disk = ['phy:/dev/loopN,xvdb,w']`, dom0's xen-blkback, the guest's blkfront);
#   zram: zram0 inside the domU, lz4;
#   tmem: tmemd's swap disk (xvdz), with no per-guest share limit
#         (default_persistent_share_percent = 0) and a --mem-limit above the disk's size, so
#         that nothing spills: the disk keeps pages that swap freed until a whole cluster is
#         free and discarded, so it can fill up to its size, well beyond the swap in use.
# One kind after another in this boot, so each runs alone. Every run must verify every byte,
# overcommit the domU's RAM at least 2x and see no OOM kill. RESULT lines give the runtime and
# pages/s of each pass. TXQ_SWAP_KINDS picks and orders the kinds (default "phy zram tmem";
# tmem needs a tmemd that serves swap disks, and fails clearly without one).
# txq-timeout: 3000

KINDS=${TXQ_SWAP_KINDS:-phy zram tmem}
JOB_LIMIT=${TXQ_SWAP_JOB_TIMEOUT:-1800}
: > /tmp/swap-results
say "memhog $SWAP_MEMHOG in a ${SWAP_GUEST_MIB} MiB domU, swap ${SWAP_MIB} MiB; kinds: $KINDS"

run_phy() {
    load_module loop
    load_module xen-blkback
    img=/tmp/swap-phy.img
    truncate -s "${SWAP_MIB}M" "$img" || fail "truncate $img"
    loopdev=$(losetup -f) || fail "no free loop device"
    losetup "$loopdev" "$img" || fail "losetup $loopdev $img"
    on_cleanup "losetup -d $loopdev; rm -f $img"
    ok "dom0: $loopdev on a sparse ${SWAP_MIB} MiB image in tmpfs"
    GUEST_DISK="phy:$loopdev,xvdb,w" swap_guest_start sw-phy xvdb
    swap_finish sw-phy phy "$JOB_LIMIT"
    guest_destroy sw-phy
    # blkback lets go of the loop device once the backend is torn down.
    wait_for 60 "losetup -d $loopdev" losetup -d "$loopdev"
    rm -f "$img"
}

run_zram() {
    swap_guest_start sw-zram zram
    swap_finish sw-zram zram "$JOB_LIMIT"
    guest_destroy sw-zram
}

MEM_LIMIT=${TXQ_SWAP_COMPARE_MEM_LIMIT:-$((SWAP_MIB + 32))M}
run_tmem() {
    mkdir -p /var/lib/tmemd/swap
    cat > /etc/tmemd-swap-compare.toml <<EOF
swap_spill_dir = "/var/lib/tmemd/swap"
default_persistent_share_percent = 0
[[swap_disk]]
domains = ["sw-tmem"]
size = "${SWAP_MIB}MiB"
device = "xvdz"
EOF
    # Page memory on a tmpfs of its own: dom0's /run is too small for it.
    mkdir -p "$PAGE_DIR"
    mount -t tmpfs -o size=$((SWAP_MIB + 96))m tmemdpages "$PAGE_DIR" || fail "mount a tmpfs on $PAGE_DIR"
    on_cleanup "umount $PAGE_DIR"
    TMEMD_MEM_LIMIT=$MEM_LIMIT \
        TMEMD_START_HINT="the tmem swap disk needs a tmemd that serves swap disks (issue 10)" \
        tmemd_start -c /etc/tmemd-swap-compare.toml
    wait_for 60 "tmemd serves Xen" tmemd_log_has "xen transport ready"
    swap_guest_start sw-tmem xvdz
    swap_finish sw-tmem tmem "$JOB_LIMIT"
    d=$(guest_domid sw-tmem)
    tmem_list /tmp/sw-tmem.list.json
    jcheck /tmp/sw-tmem.list.json "[.swap_disks[]? | select(.domid == $d)] | length == 1" "tmem list shows domain $d's swap disk"
    say "tmem list, swap disk of domain $d: $(jq -c ".swap_disks[] | select(.domid == $d)" /tmp/sw-tmem.list.json)"
    jcheck /tmp/sw-tmem.list.json ".swap_disks[] | select(.domid == $d) | .errors == 0 and .writes > 0 and .reads > 0" \
        "the tmem swap disk took reads and writes, no error"
    # The comparison is of swap in memory: a disk that spilled measured the spill file.
    jcheck /tmp/sw-tmem.list.json ".swap_disks[] | select(.domid == $d) | .pages_spilled == 0 and (.spill_writes // 0) == 0" \
        "the tmem swap disk never spilled"
    spilled=$(jq ".swap_disks[] | select(.domid == $d) | .pages_spilled" /tmp/sw-tmem.list.json)
    most=$(jq "[.clients[] | select(.domid == $d) | .pools[].counters.pages_max] | max" /tmp/sw-tmem.list.json)
    sed -i "\$s/\$/ tmemd_mem_limit=$MEM_LIMIT disk_pages_max=$most pages_spilled_at_end=$spilled/" /tmp/swap-results
    guest_destroy sw-tmem
    tmemd_stop TERM
    rm -rf "${PAGE_DIR:?}"/*
    umount "$PAGE_DIR"
}

for kind in $KINDS; do
    case $kind in
    phy | zram | tmem) ;;
    *) fail "TXQ_SWAP_KINDS: unknown kind '$kind' (use phy, zram, tmem)" ;;
    esac
    say "----- swap to $kind -----"
    "run_$kind"
done
say "summary (memhog $SWAP_MEMHOG, domU ${SWAP_GUEST_MIB} MiB):"
while read -r line; do say "  $line"; done < /tmp/swap-results
