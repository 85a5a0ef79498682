# migrate: domains keep their tmem pages across `xl save`/`xl restore` on one host (issue
# 12; `xl migrate` cannot run on this Xen build: see below). Two domUs, since a domain with a swap disk is not also offered the tmem
# device (one store client per domain):
#   mp  tmem-guest swapping 64 pages into a persistent pool, every page verified on load;
#   ms  memhog swapping on tmemd's swap disk (xvdz), every byte verified.
# Both are saved and restored: tmemd parks their pages at the release (tmem list shows them
# parked) and hands them to the restored domains, whose frontends reconnect: mp reads back
# the pages it stored before the save without storing any again. memhog must finish with
# every pass verified. Last, both are saved and their save files deleted: after
# park_timeout_secs tmem list shows no client and no parked domain, and no spill file and no
# tmemblk entry is left. tmem-guest is never let exit after a restore: Linux 6.1's evtchn
# driver BUG()s when a process closes a port bound before a save (a kernel bug; mp is
# destroyed instead).
# txq-timeout: 900

lines() { guest_log "$1" | wc -l; }


SPILL=/var/lib/tmemd/swap
BE=/local/domain/0/backend/tmemblk
PARK=${TXQ_PARK_TIMEOUT:-60}
disk_of() { echo "(.swap_disks[]? | select(.domid == $1))"; }

migrate_tmemd_start "$SPILL" "$PARK" "${TXQ_MIGRATE_MEM_LIMIT:-96M}"
on_cleanup "rm -f /tmp/mp*.chk /tmp/ms*.chk"

guest_start mp $XEN_GUEST --seconds 3600 --filesystems 1 --swap \
    --swap-pages 64 --swap-cold-pages 64 --call-timeout-ms 120000
swap_guest_start ms xvdz ${TXQ_MIGRATE_MEMHOG_ARGS:---mib 176 --passes 1 --rewrite --seed 7 --random-bytes 512}
wait_json mp 240 "$ALL_MAPPED" "connected, all pools real"
wait_json mp 300 ".guest.swap_stored >= 64 and .guest.swap_loaded > 0 and $NO_LOSS" \
    "mp: all 64 swap pages stored and some read back"
guest_wait ms "TXQ-GUEST-SWAP on dev=xvdz" 300
S=$(guest_domid ms)
wait_for 300 "ms swaps on its disk" list_has /tmp/mg.json "$(disk_of "$S") | .writes > 2000"
ok "ms (domain $S) swaps on xvdz: $(jq -c "$(disk_of "$S") | {writes, reads, pages_in_memory, pages_spilled}" /tmp/mg.json)"

# reconnected NAME LINE: mp, since console line LINE, is connected with every pool real,
# reattached its persistent pool, and read back swap pages it stored before (none stored
# again), with nothing lost.
mp_back() {
    wait_for 180 "mp served again, reattached, nothing lost" guest_json_since mp "$1" \
        "$ALL_MAPPED and .counters.map.reattached > \$before.counters.map.reattached and $NO_LOSS"
    wait_for 180 "mp reads back swap pages stored before the move" guest_json_since mp "$1" \
        ".guest.swap_stored == 64 and .guest.swap_loaded > \$before.guest.swap_loaded + 20 and $NO_LOSS"
}
# ms_back DOMID: its swap disk is connected again under DOMID and serves requests.
ms_back() {
    wait_for 180 "domain $1's swap disk connected and serving" list_has /tmp/mg-back.json \
        "$(disk_of "$1") | .state == \"connected\" and .reads + .writes > 100"
    [ "$(xenstore-read "$BE/$1/$(jq "$(disk_of "$1") | .devid" /tmp/mg-back.json)/state")" = 4 ] \
        || fail "domain $1: the swap disk is not Connected in xenstore"
}

# ---- xl save, xl restore
M=$(guest_domid mp)
for g in mp ms; do
    t0=$(secs)
    xl save "$g" "/tmp/$g.chk" > "/tmp/xl-save-$g.log" 2>&1 || { cat "/tmp/xl-save-$g.log"; fail "xl save $g"; }
    ok "xl save $g took $(( $(secs) - t0 ))s"
done
wait_for 60 "both domains parked" list_has /tmp/mg-parked.json \
    "[.parked[]? | select(.state == \"parked\")] | (map(.old_domid) | sort) == ([$M, $S] | sort)"
jcheck /tmp/mg-parked.json "[.parked[] | select(.old_domid == $S)][0].swap_disk == \"xvdz\" and all(.parked[]; .secs_left > 0 and (.uuid | length) == 36)" \
    "tmem list: both parked, with uuid and time left ($(jq -c '[.parked[] | {old_domid, name, client_id, swap_disk, secs_left}]' /tmp/mg-parked.json))"
ls "$SPILL" | grep -q "^swap-dom$S-.*\.spill$" || fail "the parked swap disk's spill file is gone"
ok "how tmemd knew of the saves: suspend read $(grep -c 'domain is suspending' "$TMEMD_LOG") times, acknowledged before it read it $(grep -c 'acknowledged a shutdown request' "$TMEMD_LOG") times"
for g in mp ms; do
    LINE_mp=$(lines mp)
    t0=$(secs)
    xl restore "/tmp/$g.chk" > "/tmp/xl-restore-$g.log" 2>&1 || { cat "/tmp/xl-restore-$g.log"; fail "xl restore $g"; }
    ok "xl restore $g took $(( $(secs) - t0 ))s (domain $(guest_domid $g))"
    [ "$g" = mp ] && LINE=$LINE_mp
done
M2=$(guest_domid mp)
S2=$(guest_domid ms)
tmemd_log_has "claimed the parked pages.*domid=$M2" || fail "tmemd did not hand mp's pages to domain $M2"
tmemd_log_has "claimed the parked pages.*domid=$S2" || fail "tmemd did not hand ms's pages to domain $S2"
mp_back "$LINE"
ok "xl save/restore: mp (domain $M -> $M2) reattached and read back its pages, none lost"
ms_back "$S2"
ok "xl save/restore: ms (domain $S -> $S2) swaps on its disk again"
list_has /tmp/mg.json '((.parked // []) | length) == 0' || fail "something is still parked: $(jq -c .parked /tmp/mg.json)"

# ---- xl migrate: not here. Debian 12's Xen 4.17 is built without shadow paging
# (CONFIG_SHADOW_PAGING is not set), so a PV domain has no log-dirty mode and `xl migrate`
# (always live) fails before it suspends the domain: "Failed to enable logdirty: 95". Tried
# in this scenario's first run (2026-12-02). The migration path of tmemd (a twin domain held
# until the suspended one is parked, then claiming at once) is tested against the fake
# xenstored: cargo test -p tmemd xen::tests::a_migration_on_one_host.

swap_finish ms tmem-saved-restored "${TXQ_SWAP_JOB_TIMEOUT:-900}"
guest_json mp "$ALL_MAPPED and $NO_LOSS" || fail "mp reports a loss or a verification error"
last_status mp /tmp/mp.last.json
ok "mp at the end: $(jq -c '{verified: .guest.verified_pages, swap_stored: .guest.swap_stored, swap_loaded: .guest.swap_loaded, connects: .counters.map.connects, reattached: .counters.map.reattached, errors: .guest.verification_errors}' /tmp/mp.last.json)"

# ---- saved and never restored: parked, then released after park_timeout_secs
for g in mp ms; do
    xl save "$g" "/tmp/$g-last.chk" > /dev/null 2>&1 || fail "xl save $g (last)"
    rm -f "/tmp/$g-last.chk"
done
list_has /tmp/mg-last.json "(.parked | length) == 2" || fail "the saved domains are not parked: $(jq -c .parked /tmp/mg-last.json)"
ok "saved and save files deleted: both parked ($(jq -c '[.parked[] | {old_domid, secs_left}]' /tmp/mg-last.json))"
wait_for $((PARK + 30)) "parked pages released after ${PARK}s" list_has /tmp/mg-end.json \
    '((.parked // []) | length) == 0 and (.clients | length) == 0 and ((.swap_disks // []) | length) == 0'
tmemd_log_has "parked pages released: no domain with its uuid came" || fail "no release line in tmemd's log"
[ -z "$(ls "$SPILL")" ] || fail "spill files left: $(ls "$SPILL" | tr '\n' ' ')"
[ -z "$(xenstore-list $BE 2>/dev/null)" ] || fail "tmemblk entries left: $(xenstore-list $BE)"
ok "after the park timeout: no client, nothing parked, no spill file, no tmemblk entry"
tmemd_stop TERM
