# txq-timeout: 600
# systemd: tmemd from its Debian package, run by systemd as dom0's PID 1 (the systemd boot:
# dom0/init-systemd, run.sh). Needs that boot; run.sh gives it one.
#  1. dpkg -i the package: the postinst enables and starts the unit (Type=notify).
#  2. systemctl stop, then systemctl start: it returns once tmemd sent READY=1 (after the
#     page memory is faulted in), with STATUS= saying guests, pages and memory; page memory
#     is a memfd handed to systemd's fd store.
#  3. A domU with persistent pages (tmem-guest's swap, 32 cold pages stored once, then only
#     read back and verified) connects; STATUS= follows it.
#  4. systemctl restart: the new tmemd gets the page memfd back from the fd store; the guest
#     reads back pages stored before the restart, byte for byte, nothing lost.
#  5. tmemd hung (SIGSTOP): systemd's watchdog (WatchdogSec=) kills and restarts it
#     (NRestarts + 1, "Watchdog timeout" in the journal); the pages are still there.
#  6. dpkg -i over the running package (an upgrade's path: the postinst try-restarts tmemd):
#     the pages are kept through the fd store, as in 4.
#  7. systemctl stop with the guest running: a clean stop (exit 0, well within
#     TimeoutStopSec), the guest sees the disconnect and goes on running.
#  8. dpkg --purge: binaries, unit and conffile gone.
# The journal of the unit is printed at the end (and on failure).

DEB=/tmemxq/tmemd.deb
# sa's swap: this many pages, each stored once, then only read back (and checked).
SWAP_PAGES=32

[ -d /run/systemd/system ] || fail "systemd is not PID 1 here: this scenario needs the systemd boot (run.sh gives it one)"
prop() { systemctl show --value -p "$1" tmemd.service; }
print_journal() {
    echo "----- journalctl -u tmemd (last ${1:-80} lines) -----"
    journalctl -u tmemd.service --no-pager --no-hostname -o short-monotonic | tail -n "${1:-80}" | cut -c1-400
    echo "----- end of journal -----"
}
guest_lines() { wc -l < "$CONSOLE_DIR/guest-$1.log"; }
status_matches() { prop StatusText | grep -Eq -- "$1"; }
# tmem status says where page memory came from at this start.
fdstore_inherited() { tmem status > /tmp/status.txt 2>&1 && grep -q "fd store (handed back at this start)" /tmp/status.txt; }

# ---- 1. install
[ -f "$DEB" ] || fail "$DEB missing from the image"
say "dpkg -i $(dpkg-deb -f "$DEB" Package Version | paste -sd' ')"
dpkg -i "$DEB" > /tmp/dpkg.log 2>&1 || { sed 's/^/[dpkg] /' /tmp/dpkg.log; fail "dpkg -i tmemd.deb"; }
sed 's/^/[dpkg] /' /tmp/dpkg.log
# tmemd's journal, followed into the log file the helpers read (and relayed to the console).
: > "$TMEMD_LOG"
journalctl -u tmemd.service -f -n all --no-hostname -o short-monotonic >> "$TMEMD_LOG" 2>&1 &
echo $! >> /run/txq-relays
relay tmemd "$TMEMD_LOG"
[ "$(systemctl is-enabled tmemd.service)" = enabled ] || fail "tmemd.service is not enabled after install"
[ "$(systemctl is-active tmemd.service)" = active ] \
    || fail "the postinst did not start tmemd: $(systemctl is-active tmemd.service), $(prop Result)"
ok "installed: tmemd.service enabled and started by the postinst (MainPID $(prop MainPID))"

# ---- 2. stop, start, readiness, STATUS=
systemctl stop tmemd.service || fail "systemctl stop tmemd (no guest)"
[ "$(prop ActiveState)" = inactive ] && [ "$(prop Result)" = success ] \
    || fail "after stop: ActiveState=$(prop ActiveState) Result=$(prop Result)"
t0=$(now)
systemctl start tmemd.service || fail "systemctl start tmemd"
t1=$(now)
# Type=notify: start returns only when READY=1 came; tmemd sends STATUS= in the same message.
[ "$(prop ActiveState)/$(prop SubState)" = active/running ] \
    || fail "systemctl start returned with tmemd $(prop ActiveState)/$(prop SubState)"
st=$(prop StatusText)
echo "$st" | grep -Eq '^0 guest\(s\) connected; 0 pages stored \(0 persistent\); page memory 0\.0 of [1-9][0-9]* MiB in use$' \
    || fail "STATUS= after start is '$st'"
exec_us=$(prop ExecMainStartTimestampMonotonic)
ready_us=$(prop ActiveEnterTimestampMonotonic)
wait_for 60 "tmemd logs its page memory faulted in" tmemd_log_has "page-data memory faulted in"
ok "systemctl start returned after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s; READY=1 $(( (ready_us - exec_us) / 1000 )) ms after exec; STATUS=$st"
tmem status > /tmp/status.txt 2>&1 || { cat /tmp/status.txt; fail "tmem status"; }
grep -q "fd store" /tmp/status.txt || { cat /tmp/status.txt; fail "page memory is not in systemd's fd store"; }
ok "tmem status: $(sed -n 's/^page memory: //p' /tmp/status.txt)"

# ---- 3. a guest with persistent pages
wait_for 60 "tmemd serves Xen" tmemd_log_has "xen transport ready"
guest_start sa $XEN_GUEST --seconds 600 --filesystems 1 --swap --swap-pages $SWAP_PAGES --swap-cold-pages $SWAP_PAGES \
    --call-timeout-ms 60000
wait_json sa 180 "$ALL_MAPPED" "connected, all pools real"
wait_json sa 120 ".guest.swap_stored >= $SWAP_PAGES and .guest.swap_loaded > 0 and $NO_LOSS" \
    "all $SWAP_PAGES of its swap pages stored, some read back"
wait_for 60 "STATUS= shows the guest and its persistent pages" status_matches \
    '^1 guest\(s\) connected; [1-9][0-9]* pages stored \([1-9][0-9]* persistent\); page memory [0-9]+\.[0-9] of'
ok "STATUS=$(prop StatusText)"
systemctl status --no-pager --lines 0 tmemd.service 2>&1 | sed 's/^/[systemctl status] /'
DOM_sa=$(guest_domid sa)

# ---- 4. systemctl restart keeps the pages (fd store)
pid=$(prop MainPID)
nr=$(prop NRestarts)
last_status sa /tmp/sa.before.json
con=$(jq -r '.counters.map.connects' /tmp/sa.before.json)
line=$(guest_lines sa)
t0=$(now)
systemctl restart tmemd.service || fail "systemctl restart tmemd"
ok "systemctl restart returned after $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s; MainPID $pid -> $(prop MainPID)"
[ "$(prop MainPID)" != "$pid" ] || fail "MainPID did not change across systemctl restart"
fdstore_inherited || { cat /tmp/status.txt; fail "the restarted tmemd did not get its page memory back from the fd store"; }
ok "the new tmemd took its page memory from systemd's fd store: $(sed -n 's/^page memory: //p; s/^recovered at start: /recovered: /p' /tmp/status.txt | paste -sd' ')"
wait_for 120 "domU sa served again after systemctl restart, its old swap pages read back" \
    guest_json_since sa "$line" ".connected and .guest.swap_stored == $SWAP_PAGES and .guest.swap_loaded > \$first.guest.swap_loaded + 20 and $NO_LOSS"
c=$(jq -s '[.[] | select(.connected)] | last | .counters.map.connects' /tmp/sa.since.json)
r=$(jq -s '[.[] | select(.connected)] | last | .counters.map.reattached' /tmp/sa.since.json)
ok "domU sa after systemctl restart: connects $con -> $c, reattached $r; more than 20 loads of its $SWAP_PAGES swap pages, all put before the restart, each verified (none stored again), nothing lost"

# ---- 5. the watchdog restarts a hung tmemd
pid=$(prop MainPID)
nr=$(prop NRestarts)
wd=$(prop WatchdogUSec)
line=$(guest_lines sa)
say "kill -STOP $pid (tmemd hung; WatchdogUSec=$wd)"
kill -STOP "$pid" || fail "kill -STOP $pid"
t0=$(now)
wait_for 150 "systemd's watchdog restarted the hung tmemd" sh -c \
    "[ \$(systemctl show --value -p NRestarts tmemd.service) -gt $nr ] && [ \$(systemctl show --value -p ActiveState tmemd.service) = active ]"
ok "watchdog: hung tmemd $pid replaced by $(prop MainPID) $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s after SIGSTOP; NRestarts $nr -> $(prop NRestarts)"
journalctl -u tmemd.service --no-pager -o cat | grep -i 'watchdog timeout' > /tmp/wd.txt \
    || fail "no 'Watchdog timeout' from systemd in tmemd's journal"
ok "journal: $(tail -n 1 /tmp/wd.txt)"
kill -0 "$pid" 2>/dev/null && fail "the hung tmemd $pid is still there"
fdstore_inherited || { cat /tmp/status.txt; fail "tmemd restarted by the watchdog did not get its page memory back from the fd store"; }
ok "the tmemd the watchdog started took its page memory from the fd store: $(sed -n 's/^recovered at start: /recovered: /p' /tmp/status.txt)"
wait_for 150 "domU sa served again after the watchdog restart, its old swap pages read back" \
    guest_json_since sa "$line" ".connected and .guest.swap_stored == $SWAP_PAGES and .guest.swap_loaded > \$first.guest.swap_loaded + 20 and $NO_LOSS"
c2=$(jq -s '[.[] | select(.connected)] | last | .counters.map.connects' /tmp/sa.since.json)
if [ "$c2" = "$c" ]; then how="resumed in place"; else how="reconnected (connects $c -> $c2)"; fi
ok "domU sa after the watchdog restart: $how; its swap pages from before read back and verified, nothing lost"

# ---- 6. an upgrade with tmemd running (dpkg -i over the installed package)
pid=$(prop MainPID)
line=$(guest_lines sa)
dpkg -i "$DEB" > /tmp/dpkg2.log 2>&1 || { sed 's/^/[dpkg] /' /tmp/dpkg2.log; fail "dpkg -i over the running package"; }
[ "$(prop ActiveState)" = active ] || fail "tmemd is $(prop ActiveState) after the upgrade"
[ "$(prop MainPID)" != "$pid" ] || fail "the upgrade did not restart tmemd (MainPID $pid)"
fdstore_inherited || { cat /tmp/status.txt; fail "after the upgrade tmemd did not get its page memory back from the fd store"; }
wait_for 150 "domU sa served again after the upgrade, its old swap pages read back" \
    guest_json_since sa "$line" ".connected and .guest.swap_stored == $SWAP_PAGES and .guest.swap_loaded > \$first.guest.swap_loaded + 20 and $NO_LOSS"
ok "dpkg -i over the running package: the postinst restarted tmemd ($pid -> $(prop MainPID)), page memory from the fd store, domU sa's swap pages from before read back and verified, nothing lost"

# ---- 7. stop with the guest running
line=$(guest_lines sa)
t0=$(now)
timeout 60 systemctl stop tmemd.service || fail "systemctl stop tmemd with a guest running failed or hung"
dt=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
[ "$(prop ActiveState)" = inactive ] && [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] \
    || fail "stop with a guest: ActiveState=$(prop ActiveState) Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus)"
awk -v t="$dt" 'BEGIN { exit !(t < 15) }' || fail "systemctl stop took $dt s with a guest running (TimeoutStopSec=20s)"
ok "systemctl stop with domU sa running: $dt s, exit status 0, Result=success"
wait_for 60 "domU sa sees tmemd gone" guest_json_since sa "$line" ".connected == false"
[ -n "$(guest_domid sa)" ] || fail "domU sa is gone after tmemd stopped"
guest_has sa "TXQ-GUEST-EXIT" && fail "tmem-guest in sa exited when tmemd stopped: $(guest_log sa | grep TXQ-GUEST-EXIT)"
ok "domU sa (domid $DOM_sa) saw the disconnect and runs on"
print_journal 120

# ---- 8. purge
dpkg --purge tmemd > /tmp/purge.log 2>&1 || { sed 's/^/[dpkg] /' /tmp/purge.log; fail "dpkg --purge tmemd"; }
for f in /usr/sbin/tmemd /usr/sbin/tmem /etc/tmemd/tmemd.toml /lib/systemd/system/tmemd.service /usr/lib/systemd/system/tmemd.service; do
    [ ! -e "$f" ] || fail "$f is still there after dpkg --purge"
done
ls=$(systemctl show --value -p LoadState tmemd.service)
[ "$ls" = not-found ] || fail "tmemd.service still loads after the purge (LoadState=$ls)"
ok "dpkg --purge: binaries, unit and conffile gone; tmemd.service not found"
