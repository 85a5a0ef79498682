# two-guests: domUs a and b each mount private filesystems and swap plus one shared
# filesystem by uuid; both are authorised for it (tmem shared-auth) before they start; a third
# domU r asks for the same uuid without authorisation and is refused. Private pools stay
# isolated (each guest verifies every byte against its own content, so a foreign page is a
# verification error), tmem list shows three clients, and the shared pool has two sharers.

UUID=7e3c0f52-41d2-4b8a-9c55-0123456789ab
tmemd_start
wait_for 60 "tmemd serves Xen" tmemd_log_has "xen transport ready"
ARGS="$XEN_GUEST --seconds 50 --filesystems 2 --swap --shared-fs $UUID"
GUEST_PAUSED=1 guest_start a $ARGS
GUEST_PAUSED=1 guest_start b $ARGS
GUEST_PAUSED=1 guest_start r $XEN_GUEST --seconds 50 --filesystems 1 --shared-fs $UUID
A=$(guest_domid a); B=$(guest_domid b); R=$(guest_domid r)
for d in $A $B; do
    tmem shared-auth "$d" -u "$UUID" -A 1 || fail "tmem shared-auth $d -u $UUID -A 1"
done
ok "domains a=$A and b=$B authorised for $UUID; r=$R is not"
xl unpause a && xl unpause b && xl unpause r || fail "xl unpause"

for g in a b; do
    wait_json $g 180 "$ALL_MAPPED and (.pools | length) == 4" "private fs, swap and the shared fs all mapped"
done
wait_json r 180 '.connected and any(.pools[]; (.kind | test("shared")) and .real_id == null and .error != null)' \
    "shared pool refused without authorisation"
guest_json r '.counters.map.refused_pools > 0' || fail "r: refused_pools counter is 0"

# One snapshot while all three are connected (the guests run for a fixed time).
wait_for 60 "tmem list shows domains $A, $B, $R and the shared pool with 2 sharers" \
    list_has /tmp/list.json "([.clients[].domid] | sort == ([$A, $B, $R] | sort)) and ([.shared_pools[].sharers | length] == [2]) and .shared_pools[0].counters.good_puts > 0"
ok "tmem list: three clients, domains $A, $B, $R"
for d in $A $B; do
    jcheck /tmp/list.json "[.clients[] | select(.domid == $d) | .pools[] | select(.kind | test(\"P$\"))] | length == 3" \
        "domain $d: its own 3 private pools"
done
jcheck /tmp/list.json '[.clients[] | select(.domid == '$R') | .pools[] | select(.kind | test("S$"))] | length == 0' \
    "domain $R holds no shared pool"
jcheck /tmp/list.json '(.shared_pools | length) == 1 and (.shared_pools[0].sharers | length) == 2' \
    "one shared pool, two sharers ($(jq -c '.shared_pools[0] | {kind, sharers}' /tmp/list.json))"
wait_json a 60 '.guest.read_hits > 0' "cache hits"
wait_json b 60 '.guest.read_hits > 0' "cache hits"
jcheck /tmp/list.json '.shared_pools[0].counters.good_puts > 0' \
    "the shared pool took puts ($(jq -c '.shared_pools[0].counters | {pages, good_puts}' /tmp/list.json))"

for g in a b r; do
    guest_exit $g 150
    [ "$GUEST_RC" = 0 ] || fail "$g: tmem-guest exited with '$GUEST_RC'"
    jcheck /tmp/$g.final.json '.ok and .guest.verification_errors == 0' \
        "$g final: 0 verification errors ($(jq -r '"\(.guest.verified_pages) verified pages, \(.guest.read_hits) hits"' /tmp/$g.final.json))"
done
for g in a b; do
    jcheck /tmp/$g.final.json "$ALL_MAPPED" "$g final: every pool, the shared one included, real"
done
