# first-boot: a domU that starts before tmemd mounts its filesystems and swap and gets fake
# handles; then tmemd starts in dom0, the guest's frontend connects over real grants and an
# event channel, every handle is remapped to a real pool, and verified traffic flows (hits).

# 90 s: under TCG the guest does ~64 ops/s over Xen, and a swap load needs a swap page stored
# first; 45 s once left it at 0 loads when tmemd came up late in the run.
guest_start fb $XEN_GUEST --seconds 90 --filesystems 2 --swap
guest_wait fb TXQ-GUEST-RUN 180
wait_json fb 60 '(.pools | length) == 3 and (.connected | not) and all(.pools[]; .real_id == null)' \
    "2 filesystems + swap mounted with fake handles, no backend"
domid=$(guest_domid fb)

tmemd_start
wait_for 60 "tmemd serves Xen ('xen transport ready' in its log)" tmemd_log_has "xen transport ready"
ok "tmemd: xen transport ready"
BE=/local/domain/0/backend/tmem/$domid/0
wait_json fb 60 "$ALL_MAPPED" "connected over Xen; every fake handle remapped to a real pool"
[ "$(xenstore-read $BE/state)" = 4 ] || fail "$BE/state is '$(xenstore-read $BE/state)', not 4 (Connected)"
ok "xenstore: backend $BE Connected (4), frontend state $(xenstore-read /local/domain/$domid/device/tmem/0/state)"
grep -c /dev/xen/gntdev "/proc/$(tmemd_pid)/maps" > /tmp/gnt.count
[ "$(cat /tmp/gnt.count)" -gt 0 ] || fail "tmemd has no gntdev mapping while domain $domid is connected"
ok "tmemd maps the guest's grants ($(cat /tmp/gnt.count) gntdev mappings in /proc/$(tmemd_pid)/maps)"
tmem_list /tmp/list.json
jcheck /tmp/list.json "[.clients[] | select(.domid == $domid)] | length == 1 and (.[0].pools | length) == 3" \
    "tmem list: one client for domain $domid with 3 pools"
wait_json fb 60 '.guest.read_hits > 0 and .guest.swap_loaded > 0' "cleancache hits and frontswap loads from tmemd"

guest_exit fb 120
f=/tmp/fb.final.json
[ "$GUEST_RC" = 0 ] || fail "tmem-guest exited with '$GUEST_RC'"
jcheck $f ".ok and .guest.verification_errors == 0 and ($ALL_MAPPED)" \
    "final: 0 verification errors, all pools real ($(jq -c '[.pools[] | {fake_id, real_id, kind}]' $f))"
jcheck $f '.guest.read_hits > 0 and .guest.swap_loaded > 0' \
    "final: $(jq -r '"\(.guest.verified_pages) verified pages, \(.guest.read_hits) cleancache hits, \(.guest.swap_loaded) swap loads"' $f)"
