# restart: tmemd is stopped under load, once with SIGTERM and once with SIGKILL, and started
# again each time. The guests (two domUs, filesystems and swap) must reconnect on their own,
# get real pools again, and never see a stale or corrupt byte (exit 0, 0 verification errors).

tmemd_start
wait_for 10 "tmemd serves Xen" tmemd_log_has "xen transport ready"
ARGS="$XEN_GUEST --seconds 75 --filesystems 2 --swap"
guest_start ra $ARGS
guest_start rb $ARGS
for g in ra rb; do wait_json $g 180 "$ALL_MAPPED" "connected, all pools real"; done
n=1
for sig in TERM KILL; do
    for g in ra rb; do wait_json $g 60 '.guest.ops > 0 and .counters.map.connects >= '$n "traffic flowing before SIG$sig"; done
    say "tmemd_stop $sig (under load)"
    tmemd_stop $sig
    ok "tmemd stopped by SIG$sig"
    sleep 1
    tmemd_start
    wait_for 10 "restarted tmemd serves Xen" sh -c "[ \$(grep -c 'xen transport ready' $TMEMD_LOG) -ge $((n + 1)) ]"
    n=$((n + 1))
    for g in ra rb; do
        # tmemd's memory is gone: a persistent pool may be reported lost (the guest counts the
        # pages as lost and must not read them back), but every pool must be real again.
        wait_json $g 90 "$REMAPPED and .counters.map.connects >= $n" "reconnected after SIG$sig (connects >= $n), all pools real again"
    done
done
for g in ra rb; do
    guest_exit $g 150
    [ "$GUEST_RC" = 0 ] || fail "$g: tmem-guest exited with '$GUEST_RC' (stale or corrupt byte, or a crash)"
    jcheck /tmp/$g.final.json '.ok and .guest.verification_errors == 0 and .counters.map.connects >= 3' \
        "$g final: 0 verification errors over 3 connections ($(jq -r '"\(.guest.verified_pages) verified pages, \(.guest.read_hits) hits, \(.guest.swap_lost) swap pages reported lost"' /tmp/$g.final.json))"
done
