# destroy: `xl destroy` of a connected domU. Its client and pools disappear from tmem list,
# tmemd unmaps its grants (no gntdev mapping left in tmemd's address space) and removes its
# backend directory; a second domU, connected all along, is not disturbed.

tmemd_start
wait_for 60 "tmemd serves Xen" tmemd_log_has "xen transport ready"
guest_start da $XEN_GUEST --seconds 90 --filesystems 2 --swap
guest_start db $XEN_GUEST --seconds 45 --filesystems 1 --swap
for g in da db; do wait_json $g 180 "$ALL_MAPPED and .guest.ops > 0" "connected, all pools real"; done
A=$(guest_domid da); B=$(guest_domid db)
maps() { grep -c /dev/xen/gntdev "/proc/$(tmemd_pid)/maps"; }
before=$(maps)
tmem_list /tmp/before.json
jcheck /tmp/before.json "[.clients[] | select(.domid == $A) | .pools[]] | length == 3" "tmem list: domain $A has 3 pools"
say "gntdev mappings in tmemd before: $before"
xl destroy da || fail "xl destroy da"
ok "xl destroy da (domain $A)"
gone() { tmem list --json | jq -e "[.clients[] | select(.domid == $A)] | length == 0"; }
wait_for 60 "domain $A's client and pools gone from tmem list" gone
ok "domain $A gone from tmem list"
wait_for 60 "backend directory of domain $A removed" sh -c "! xenstore-read /local/domain/0/backend/tmem/$A/0/state"
ok "backend/tmem/$A removed from xenstore"
wait_for 60 "tmemd unmapped domain $A's grants" sh -c "[ \$(grep -c /dev/xen/gntdev /proc/$(tmemd_pid)/maps) -lt $before ]"
ok "gntdev mappings in tmemd: $before -> $(maps)"
guest_exit db 120
[ "$GUEST_RC" = 0 ] || fail "db: tmem-guest exited with '$GUEST_RC'"
jcheck /tmp/db.final.json ".ok and .guest.verification_errors == 0 and ($ALL_MAPPED) and .counters.map.connects == 1" \
    "db final: 0 verification errors, still on its first connection with real pools"
wait_for 60 "domain $B gone" sh -c "! xl domid db"
wait_for 60 "no gntdev mapping left in tmemd" sh -c "[ \$(grep -c /dev/xen/gntdev /proc/$(tmemd_pid)/maps) = 0 ]"
tmem_list /tmp/after.json
jcheck /tmp/after.json '(.clients | length) == 0 and (.global.pages == 0)' "no client and no page left in tmemd"
