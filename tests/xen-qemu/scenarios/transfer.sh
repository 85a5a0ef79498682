# transfer: a domU's persistent pages move from one tmemd instance to another with `tmem save`
# and `tmem restore`. The domU (swap in a persistent pool, every page verified on load) is
# paused, its pages saved to a file; the first tmemd is killed and its page memory deleted;
# a second tmemd with page memory of its own restores the file, the domU is unpaused, its
# frontend reconnects to the new tmemd, reattaches its pool and reads back every swap page it
# stored before the move. Corrupt, truncated and foreign files are refused and leave nothing.
# txq-timeout: 600

A_MEM=/run/txq-xfer-a
B_MEM=/run/txq-xfer-b
mkdir -p "$A_MEM" "$B_MEM"
on_cleanup "rm -rf $A_MEM $B_MEM /tmp/xfer*.tmem"
tmemd_start --page-file "$A_MEM/pages"
wait_for 60 "tmemd serves Xen" tmemd_log_has "xen transport ready"
# Its swap is small and cold: each of its 64 pages is stored once, then only read back; a
# call may wait 60 s (it waits out the move instead of giving up on tmemd).
guest_start ta $XEN_GUEST --seconds 150 --filesystems 1 --swap \
    --swap-pages 64 --swap-cold-pages 64 --call-timeout-ms 60000
wait_json ta 180 "$ALL_MAPPED" "connected, all pools real"
D=$(guest_domid ta)
wait_json ta 300 ".guest.swap_stored >= 64 and .guest.swap_loaded > 0 and $NO_LOSS" \
    "ta: all 64 swap pages stored and some read back"

xl pause ta || fail "xl pause ta"
ok "domain $D paused"
if out=$(tmem save "$D" /tmp/xfer.tmem 2>&1); then fail "saving a connected domain without --live succeeded: $out"; fi
echo "$out" | grep -q -- "--live" || fail "the refusal does not say what to do: $out"
ok "save of a connected domain refused without --live: $out"
out=$(tmem save --live "$D" /tmp/xfer.tmem 2>&1) || fail "tmem save --live $D: $out"
[ -f /tmp/xfer.tmem ] && [ ! -e /tmp/xfer.tmem.partial ] || fail "no whole image written"
ok "$out ($(stat -c %s /tmp/xfer.tmem) bytes)"

tmemd_stop KILL
rm -rf "$A_MEM"
ok "the first tmemd killed and its page memory deleted: only the file holds the pages"
tmemd_start --page-file "$B_MEM/pages"
wait_for 60 "the second tmemd serves Xen" sh -c "[ \$(grep -c 'xen transport ready' $TMEMD_LOG) -ge 2 ]"

# Bad files first: each refused with a message naming what is wrong, nothing left behind.
size=$(stat -c %s /tmp/xfer.tmem)
cp /tmp/xfer.tmem /tmp/xfer-corrupt.tmem
printf '\377' | dd of=/tmp/xfer-corrupt.tmem bs=1 seek=$((size / 2)) conv=notrunc status=none
head -c $((size - 3000)) /tmp/xfer.tmem > /tmp/xfer-short.tmem
head -c 4096 /bin/busybox > /tmp/xfer-foreign.tmem 2>/dev/null || head -c 4096 "$(command -v tmem)" > /tmp/xfer-foreign.tmem
for bad in corrupt:corrupt short:truncated foreign:"not a tmem image"; do
    f=${bad%%:*}; want=${bad#*:}
    if out=$(tmem restore --as 999 /tmp/xfer-$f.tmem 2>&1); then fail "the $f image was restored: $out"; fi
    echo "$out" | grep -q "$want" || fail "the $f image: expected '$want' in: $out"
    ok "$f image refused: $out"
done
tmem_list /tmp/xfer-list.json
jcheck /tmp/xfer-list.json '(.clients | length) == 0' "refused images left no client behind"

out=$(tmem restore /tmp/xfer.tmem 2>&1) || fail "tmem restore: $out"
ok "$out"
if out=$(tmem restore /tmp/xfer.tmem 2>&1); then fail "the same image restored twice: $out"; fi
echo "$out" | grep -q "already has a client" || fail "a second restore: $out"
ok "the same image restored twice is refused: $out"

LINE=$(wc -l < "$CONSOLE_DIR/guest-ta.log")
xl unpause ta || fail "xl unpause ta"
ok "domain $D unpaused"
wait_for 120 "ta served by the second tmemd, all pools real, nothing lost" \
    guest_json_since ta "$LINE" "$ALL_MAPPED and .guest.ops > \$first.guest.ops + 50 and $NO_LOSS"
guest_json_since ta "$LINE" ".counters.map.reattached >= 1" \
    || fail "ta reconnected without reattaching its persistent pool"
wait_for 120 "ta: swap pages stored before the move read back from the second tmemd" \
    guest_json_since ta "$LINE" ".guest.swap_stored == 64 and .guest.swap_loaded > \$first.guest.swap_loaded + 20 and $NO_LOSS"
ok "ta: its 64 swap pages, all stored in the first tmemd, read back from the second and verified byte for byte (none stored again)"
guest_exit ta 240
[ "$GUEST_RC" = 0 ] || fail "ta: tmem-guest exited with '$GUEST_RC' (stale or corrupt byte, lost page, or a crash)"
jcheck /tmp/ta.final.json ".ok and $NO_LOSS and .guest.swap_stored == 64" \
    "ta final: 0 verification errors, 0 swap pages lost ($(jq -r '"\(.guest.verified_pages) verified pages, \(.guest.swap_loaded) swap pages read back, \(.counters.map.connects) connects"' /tmp/ta.final.json))"
tmemd_stop TERM
