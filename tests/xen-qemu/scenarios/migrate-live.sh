# migrate-live (issue 12; manual, not in auto): `xl migrate` to localhost of two domains with
# tmem pages, while they use them. Two PVH domUs (a domain with a swap disk is not also
# offered the tmem device):
#   mp  tmem-guest swapping 64 pages into a persistent pool, every page verified on load;
#   ms  memhog swapping on tmemd's swap disk (xvdz), every byte verified.
# PVH, not PV: `xl migrate` is always live and needs log-dirty mode, and Debian 12's Xen is
# built without shadow paging, so a PV domain fails ("Failed to enable logdirty: 95"). A PVH
# domain needs HAP, which Xen has in QEMU when TCG emulates AMD nested paging (run.sh boots
# with -cpu qemu64,+npt when this scenario is asked for). Each domain is migrated with
# `xl migrate -s "" NAME "xl migrate-receive"` (the receiver runs here: a one-line stand-in
# for ssh). tmemd holds the incoming twin's connect until the old domain is suspended,
# released and parked, then the twin claims the pages: mp must reattach its pool and read
# back pages stored before the move (none stored again, none lost), ms's disk must serve
# under the new domain id, and memhog must finish with every byte verified.
# txq-timeout: 1500

lines() { guest_log "$1" | wc -l; }

SPILL=/var/lib/tmemd/swap
PARK=${TXQ_PARK_TIMEOUT:-60}
disk_of() { echo "(.swap_disks[]? | select(.domid == $1))"; }

xl info | grep -q '^virt_caps.* hap' \
    || fail "this Xen has no HAP, so no PVH domU and no xl migrate: boot QEMU with nested paging (TMEMXQ_QEMU_CPU=qemu64,+npt)"
export GUEST_TYPE=pvh

migrate_tmemd_start "$SPILL" "$PARK" "${TXQ_MIGRATE_MEM_LIMIT:-96M}"

guest_start mp $XEN_GUEST --seconds 3600 --filesystems 1 --swap \
    --swap-pages 64 --swap-cold-pages 64 --call-timeout-ms 120000
wait_json mp 300 "$ALL_MAPPED" "connected, all pools real"
wait_json mp 300 ".guest.swap_stored >= 64 and .guest.swap_loaded > 0 and $NO_LOSS" \
    "mp: all 64 swap pages stored and some read back"
# ms only now: its swap disk fills tmemd's memory, and mp's persistent puts would then fail.
swap_guest_start ms xvdz ${TXQ_MIGRATE_MEMHOG_ARGS:---mib 176 --passes 1 --rewrite --seed 7 --random-bytes 512}
guest_wait ms "TXQ-GUEST-SWAP on dev=xvdz" 300
S=$(guest_domid ms)
wait_for 300 "ms swaps on its disk" list_has /tmp/mg.json "$(disk_of "$S") | .writes > 2000"
ok "ms (domain $S) swaps on xvdz: $(jq -c "$(disk_of "$S") | {writes, reads, pages_in_memory, pages_spilled}" /tmp/mg.json)"

guest_has ms "TXQ-GUEST-MEMHOG rc=" && fail "ms: memhog finished before the migration (give it more to do)"
M=$(guest_domid mp)
LINE=$(lines mp)
for g in mp ms; do
    old=$(guest_domid $g)
    t0=$(secs)
    xl migrate -s "" "$g" "xl migrate-receive" > "/tmp/xl-migrate-$g.log" 2>&1 \
        || { cat "/tmp/xl-migrate-$g.log"; fail "xl migrate $g localhost"; }
    grep -q "Migration successful" "/tmp/xl-migrate-$g.log" || { cat "/tmp/xl-migrate-$g.log"; fail "xl migrate $g: no success line"; }
    ok "xl migrate $g to localhost took $(( $(secs) - t0 ))s (domain $old -> $(guest_domid $g))"
    relay "$g" "$CONSOLE_DIR/guest-$g--incoming.log"
done
ok "console logs: $(ls "$CONSOLE_DIR" | tr '\n' ' ')"
M2=$(guest_domid mp)
S2=$(guest_domid ms)
tmemd_log_has "domain claimed the parked pages.*domid=$M2 old_domid=$M" || fail "tmemd did not hand mp's pages to domain $M2"
tmemd_log_has "domain claimed the parked pages.*domid=$S2 old_domid=$S" || fail "tmemd did not hand ms's pages to domain $S2"
wait_for 300 "mp served again, reattached, nothing lost" guest_json_since mp "$LINE" \
    "$ALL_MAPPED and .counters.map.reattached > \$before.counters.map.reattached and $NO_LOSS"
wait_for 300 "mp reads back swap pages stored before the move" guest_json_since mp "$LINE" \
    ".guest.swap_stored == 64 and .guest.swap_loaded > \$before.guest.swap_loaded + 20 and $NO_LOSS"
ok "xl migrate: mp (domain $M -> $M2) reattached and read back its pages, none lost"
wait_for 300 "domain $S2's swap disk connected and serving" list_has /tmp/mg-back.json \
    "$(disk_of "$S2") | .state == \"connected\" and .reads + .writes > 100"
ok "xl migrate: ms (domain $S -> $S2) swaps on its disk again: $(jq -c "$(disk_of "$S2") | {writes, reads, pages_in_memory, pages_spilled}" /tmp/mg-back.json)"
list_has /tmp/mg.json '((.parked // []) | length) == 0' || fail "something is still parked: $(jq -c .parked /tmp/mg.json)"

swap_finish ms tmem-migrated "${TXQ_SWAP_JOB_TIMEOUT:-1200}"
guest_json mp "$ALL_MAPPED and $NO_LOSS" || fail "mp reports a loss or a verification error"
last_status mp /tmp/mp.last.json
ok "mp at the end: $(jq -c '{verified: .guest.verified_pages, swap_stored: .guest.swap_stored, swap_loaded: .guest.swap_loaded, connects: .counters.map.connects, reattached: .counters.map.reattached, errors: .guest.verification_errors}' /tmp/mp.last.json)"
guest_destroy mp
guest_destroy ms
wait_for 60 "no client left" list_has /tmp/mg-end.json '(.clients | length) == 0 and ((.parked // []) | length) == 0'
tmemd_stop TERM
