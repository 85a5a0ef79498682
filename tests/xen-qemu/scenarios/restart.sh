# restart: tmemd is stopped under load, once with SIGTERM and once with SIGKILL, and started
# again each time on the same page file. Two domUs (filesystems and swap, i.e. a persistent
# pool, every page verified on load) must lose no swap page and never see a stale or corrupt
# byte; `ra`'s swap pages are all stored before the first stop and read back after each
# restart. After SIGTERM (tmemd closes the device) both reconnect and find their persistent
# pool again ("reattached"). After SIGKILL the frontends are still Connected: `ra` waits up to 60 s
# for an answer and must be resumed in place (same connection, same pool ids, its requests in
# flight answered); `rb` gives up after the default 5 s and is either resumed or reconnects
# (by its own count of connections: if its call timed out before tmemd was back, it resets
# the device even after tmemd resumed it). For each restart the scenario reports which path
# each guest took and how long after tmemd's first log line it was served again.

# tmemd's log time of a line (tracing's UTC timestamp) in seconds since midnight.
log_secs() {
    echo "$1" | sed -n 's/^[0-9-]*T\([0-9]*\):\([0-9]*\):\([0-9.]*\)Z.*/\1 \2 \3/p' \
        | awk '{ printf "%.3f", $1 * 3600 + $2 * 60 + $3 }'
}
# The log of the tmemd started last (from its "=== tmemd" marker on).
last_tmemd_log() { awk '/^=== tmemd/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$TMEMD_LOG"; }
# log_line_secs PATTERN: seconds from the first log line of the tmemd started last to its
# last line matching PATTERN (nothing if there is none).
log_line_secs() {
    last_tmemd_log > /tmp/tmemd-last.log
    _first=$(grep -m 1 '^[0-9][0-9-]*T' /tmp/tmemd-last.log)
    _line=$(grep -E "$1" /tmp/tmemd-last.log | tail -n 1)
    [ -n "$_first" ] && [ -n "$_line" ] || return 1
    awk -v a="$(log_secs "$_first")" -v b="$(log_secs "$_line")" 'BEGIN { printf "%.2f", b - a }'
}

tmemd_start
wait_for 60 "tmemd serves Xen" tmemd_log_has "xen transport ready"
ARGS="$XEN_GUEST --seconds 150 --filesystems 2 --swap"
# ra's swap is small and cold: each of its 64 pages is stored once, then only read back.
guest_start ra $ARGS --swap-pages 64 --swap-cold-pages 64 --call-timeout-ms 60000
guest_start rb $ARGS
for g in ra rb; do wait_json $g 180 "$ALL_MAPPED" "connected, all pools real"; done
DOM_ra=$(guest_domid ra)
DOM_rb=$(guest_domid rb)
n=1
wait_json ra 120 ".guest.swap_stored >= 64 and $NO_LOSS" "ra: all 64 of its swap pages stored"
for sig in TERM KILL; do
    for g in ra rb; do
        wait_json $g 90 ".guest.swap_loaded > 0 and .connected and $NO_LOSS" \
            "swap pages stored and read back before SIG$sig, nothing lost"
        # Its connections so far (they cannot change while tmemd is away).
        last_status $g /tmp/$g.before.json
        eval "CON_$g=\$(jq -r '.counters.map.connects' /tmp/$g.before.json)"
    done
    say "tmemd_stop $sig (under load)"
    tmemd_stop $sig
    # Only what is cheap between the stop and the start: a slow restart would make the
    # frontends give up on their calls (5 s by default) and reconnect.
    LINE_ra=$(wc -l < "$CONSOLE_DIR/guest-ra.log")
    LINE_rb=$(wc -l < "$CONSOLE_DIR/guest-rb.log")
    tmemd_start
    ok "tmemd stopped by SIG$sig and started again"
    wait_for 60 "restarted tmemd serves Xen" sh -c "[ \$(grep -c 'xen transport ready' $TMEMD_LOG) -ge $((n + 1)) ]"
    n=$((n + 1))
    for g in ra rb; do
        eval "d=\$DOM_$g; line=\$LINE_$g; con=\$CON_$g"
        # Served again: every pool real, work going on past where the guest stood when tmemd
        # went (well past the few ops a guest can do without tmemd), nothing lost.
        wait_for 90 "domU $g served again after SIG$sig, all pools real, nothing lost" \
            guest_json_since $g "$line" "$ALL_MAPPED and .guest.ops > \$first.guest.ops + 50 and $NO_LOSS"
        # Which way, by the guest's own count of connections: the same connection carried on
        # (resumed in place) or a new one. A guest whose call timed out while tmemd was away
        # reconnects even if tmemd resumed it first (it then resets the device).
        c=$(jq -s '[.[] | select(.connected)] | last | .counters.map.connects' /tmp/$g.since.json)
        if [ "$c" = "$con" ]; then
            how=resumed
            t=$(log_line_secs "resumed in place.*domid=$d( |\$)") \
                || fail "$g: served on the same connection, but tmemd logged no resume for domid $d"
        else
            how=reconnected
            t=$(log_line_secs "Xen guest connected.*domid=$d( |\$)") \
                || fail "$g: reconnected, but tmemd logged no connect for domid $d"
            guest_json_since $g "$line" ".counters.map.connects > $con and .counters.map.reattached >= 1" \
                || fail "$g: reconnected without reattaching its persistent pool"
        fi
        ok "domU $g after SIG$sig: $how (connects $con -> $c), all pools real, work going on, nothing lost"
        if [ "$sig" = KILL ] && [ "$g" = ra ] && [ "$how" != resumed ]; then
            fail "$g waits 60 s for an answer, so it must be resumed in place after SIGKILL; it $how"
        fi
        if [ "$sig" = TERM ] && [ "$how" != reconnected ]; then
            fail "$g: tmemd closed the device on SIGTERM, yet it was $how"
        fi
        if [ $g = ra ]; then
            # Its 64 swap pages were all stored before the stop and never since (a store would
            # mean one was missing): these loads read back pages put before the restart.
            wait_for 90 "domU ra after SIG$sig: swap pages put before the restart read back" \
                guest_json_since ra "$line" ".guest.swap_stored == 64 and .guest.swap_loaded > \$first.guest.swap_loaded + 20 and $NO_LOSS"
            ok "domU ra after SIG$sig: its 64 swap pages, all put before the restart, read back and verified byte for byte (none stored again)"
        fi
        ok "TIMING SIG$sig domU $g: $how $t s after tmemd's first log line"
        eval "HOW_${g}_$sig=\"$how $t\""
    done
done
for g in ra rb; do
    guest_exit $g 240
    [ "$GUEST_RC" = 0 ] || fail "$g: tmem-guest exited with '$GUEST_RC' (stale or corrupt byte, lost page, or a crash)"
    extra=""
    [ $g = ra ] && extra=" and .guest.swap_stored == 64"
    jcheck /tmp/$g.final.json ".ok and $NO_LOSS$extra" \
        "$g final: 0 verification errors, 0 swap pages lost, 0 pools lost ($(jq -r '"\(.guest.verified_pages) verified pages, \(.guest.swap_loaded) swap pages read back, \(.counters.map.connects) connects, \(.counters.map.reattached) reattached"' /tmp/$g.final.json))"
done
eval "say \"restart summary: SIGTERM ra=\$HOW_ra_TERM rb=\$HOW_rb_TERM; SIGKILL ra=\$HOW_ra_KILL rb=\$HOW_rb_KILL (path, seconds from tmemd's first log line to the guest served)\""
