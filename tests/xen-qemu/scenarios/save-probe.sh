# save-probe (manual, not in auto; issue 12's first question): what happens today to a domU
# that uses tmem across `xl save` / `xl restore`, and when tmemd sees the restored domain
# relative to its unpause. It measures and reports ("PROBE" lines); it fails only when the
# probe cannot run (the domU does not start, save or restore fail, the guest never runs
# again). Run: tests/xen-qemu/run.sh save-probe
# txq-timeout: 900

ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
probe() { echo "TXQ-PROBE [$(now)] $*"; }

tmemd_start
wait_for 60 "tmemd serves Xen" tmemd_log_has "xen transport ready"
guest_start sp $XEN_GUEST --seconds 240 --filesystems 1 --swap \
    --swap-pages 64 --swap-cold-pages 64 --call-timeout-ms 120000
wait_json sp 180 "$ALL_MAPPED" "connected, all pools real"
OLD=$(guest_domid sp)
wait_json sp 300 ".guest.swap_stored >= 64 and .guest.swap_loaded > 0 and $NO_LOSS" \
    "sp: all 64 swap pages stored and some read back"
last_status sp /tmp/sp.before.json
probe "before save: domid $OLD, $(jq -c '{connects: .counters.map.connects, swap_stored: .guest.swap_stored, swap_loaded: .guest.swap_loaded}' /tmp/sp.before.json)"
tmem_list /tmp/sp.list-before.json
probe "tmem list before: $(jq -c '[.clients[] | {domid, instance, attached, pages}]' /tmp/sp.list-before.json)"

t0=$(ms)
xl save sp /tmp/sp.chk > /tmp/xl-save.log 2>&1 || { cat /tmp/xl-save.log; fail "xl save sp"; }
t1=$(ms)
probe "xl save took $((t1 - t0)) ms ($(stat -c %s /tmp/sp.chk) bytes)"
sleep 2
tmem_list /tmp/sp.list-saved.json
probe "tmem list after save: $(jq -c '[.clients[] | {domid, instance, attached, pages}]' /tmp/sp.list-saved.json)"
grep -E "domid=$OLD( |$)" "$TMEMD_LOG" | tail -n 5 | sed 's/^/TXQ-PROBE tmemd: /'

LINE=$(wc -l < "$CONSOLE_DIR/guest-sp.log")
LOGN=$(wc -l < "$TMEMD_LOG")
t2=$(ms)
# Watch for the new domain in xenstore while xl restore runs (it unpauses at the end).
(
    while :; do
        d=$(xl domid sp 2>/dev/null) && { echo "$d $(ms)" > /tmp/sp.newdom; break; }
        sleep 0.05
    done
) &
xl restore /tmp/sp.chk > /tmp/xl-restore.log 2>&1 || { cat /tmp/xl-restore.log; fail "xl restore"; }
t3=$(ms)
wait_for 60 "the new domain id seen" test -s /tmp/sp.newdom
read -r NEW tnew < /tmp/sp.newdom
probe "xl restore took $((t3 - t2)) ms; new domid $NEW visible $((tnew - t2)) ms after it started, unpaused at its end"
wait_for 60 "tmemd offers the device to domain $NEW" tmemd_log_has "tmem device offered to domain (InitWait).*domid=$NEW"
tail -n +"$((LOGN + 1))" "$TMEMD_LOG" | grep -E "domid=($OLD|$NEW)( |$)" | head -n 12 | sed 's/^/TXQ-PROBE tmemd: /'
# Does the guest run again, and is it served (all pools real, requests answered)?
wait_for 120 "the restored guest reports again" guest_json_since sp "$LINE" "true"
served_again() { guest_json_since sp "$LINE" "$ALL_MAPPED and .guest.ops > \$first.guest.ops + 20"; }
i=0
until served_again || [ $i -ge 120 ]; do sleep 1; i=$((i + 1)); done
if served_again; then probe "served again within ${i}s of the first status line after restore"; else probe "NOT served again within 120 s"; fi
last_status sp /tmp/sp.after.json
probe "after restore: $(jq -c '{connected, connects: .counters.map.connects, reattached: .counters.map.reattached, losses: .counters.map.losses, lost_pages: .counters.map.lost_pages, swap_lost: .guest.swap_lost, verification_errors: .guest.verification_errors}' /tmp/sp.after.json)"
tmem_list /tmp/sp.list-after.json
probe "tmem list after restore: $(jq -c '[.clients[] | {domid, instance, attached, pages}]' /tmp/sp.list-after.json)"
guest_exit sp 300
probe "final: rc=$GUEST_RC $(jq -c '{ok, verified: .guest.verified_pages, swap_lost: .guest.swap_lost, verification_errors: .guest.verification_errors, connects: .counters.map.connects}' /tmp/sp.final.json 2>/dev/null)"
ok "probe ran: see the TXQ-PROBE lines"
