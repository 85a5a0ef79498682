# smoke: the harness itself, without needing the guest side of the Xen transport.
# dom0 xenstore answers; tmemd starts in dom0 and says which transport it serves; a PV domU
# boots, reaches xenstore, and tmem-guest runs there with fake handles only (local transport,
# no backend it can reach), verifying every byte, and exits 0; dom0 reads the domU's xenstore
# key. If tmemd serves Xen: it offers the tmem device to the domU (backend and frontend
# directories, InitWait; the domU can read its side) and removes it when the domU is gone.

xenstore-read /local/domain/0/name >/dev/null || fail "dom0 cannot read its own xenstore node"
ok "xenstore answers in dom0 (domain 0 is '$(xenstore-read /local/domain/0/name)')"

tmemd_start
# tmemd must say which transport it serves: Xen, or why Xen is absent.
wait_for 60 "tmemd logged its readiness line" tmemd_log_has "ready"
XEN=0
if tmemd_log_has "xen transport ready"; then
    XEN=1
    ok "tmemd serves the Xen transport"
elif tmemd_log_has "Xen absent"; then
    ok "tmemd: $(grep -m1 -o 'Xen absent.*' "$TMEMD_LOG")"
else
    ok "tmemd without a Xen transport: $(grep -m1 -o 'tmemd ready.*' "$TMEMD_LOG")"
fi
tmem list --json > /tmp/list.json || fail "tmem list --json"
ok "tmem list --json: $(cut -c1-200 /tmp/list.json)"

guest_start smoke --json --seconds 6 --filesystems 2 --swap --report-interval 2
guest_wait smoke "TXQ-GUEST-UP" 120
domid=$(guest_domid smoke)
[ -n "$domid" ] || fail "xl does not know domU smoke"
wait_for 60 "domU's xenstore write visible in dom0" \
    sh -c "[ \"\$(xenstore-read /local/domain/$domid/data/tmemxq)\" = alive-$domid ]"
ok "domU $domid wrote its xenstore node; dom0 read it back"
for d in evtchn gntdev gntalloc; do
    guest_log smoke | grep -q "TXQ-GUEST-WARN /dev/xen/$d missing" && fail "domU has no /dev/xen/$d"
done
ok "domU has /dev/xen/{evtchn,gntdev,gntalloc}"
BE=/local/domain/0/backend/tmem/$domid/0
FE=/local/domain/$domid/device/tmem/0
if [ $XEN = 1 ]; then
    wait_for 15 "tmemd offered the tmem device to domain $domid ($BE/state = 2)" \
        sh -c "[ \"\$(xenstore-read $BE/state)\" = 2 ]"
    [ "$(xenstore-read $FE/backend)" = "$BE" ] || fail "$FE/backend is '$(xenstore-read $FE/backend)', not $BE"
    ok "tmem device offered: $BE (state 2, InitWait), $FE/backend points to it"
    if guest_has smoke "TXQ-GUEST-XS device/tmem/0/backend=$BE"; then
        ok "the domU reads its own device/tmem/0 directory"
    else
        say "note: the domU booted before the offer reached its directory (no TXQ-GUEST-XS line)"
    fi
fi

guest_exit smoke 90
[ "$GUEST_RC" = 0 ] || fail "tmem-guest in domU exited with '$GUEST_RC'"
f=/tmp/smoke.final.json
[ -s $f ] || fail "no final JSON line from tmem-guest"
jcheck $f '.ok == true and .guest.verification_errors == 0' "tmem-guest verified every byte (ok, 0 verification errors)"
jcheck $f '.pools | length >= 3' "tmem-guest holds handles for 2 filesystems and swap ($(jq -c '[.pools[] | {fake_id, real_id, kind}]' $f))"
if jq -e '.connected == false' $f >/dev/null; then
    jcheck $f '[.pools[] | select(.real_id != null)] | length == 0' "not connected: every handle is fake (real_id null)"
else
    ok "tmem-guest is connected (client $(jq -c .client_id $f))"
fi
jcheck $f '.guest.ops > 0' "tmem-guest ran $(jq .guest.ops $f) operations"
if [ $XEN = 1 ]; then
    # on_poweroff=destroy: the domain goes away after the guest's run; tmemd must notice.
    wait_for 60 "domU $domid gone" sh -c "! xl domid smoke"
    wait_for 15 "tmemd removed $BE after the domain died" sh -c "! xenstore-read $BE/state"
    ok "domain $domid gone: tmemd removed its backend directory"
fi
