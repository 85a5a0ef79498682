# Helpers for the dom0 scenario scripts (tests/xen-qemu/scenarios/*.sh), sourced by dom0's
# /init before each scenario. POSIX sh (busybox). A scenario fails by calling `fail`, which
# prints diagnostics first and then a TXQ-FAIL marker, so the host's log tail shows both.

TMEMD_LOG=/var/log/tmemd.log
CONSOLE_DIR=/var/log/xen/console
CONTROL_SOCK=/run/tmemd/control.sock
# Where tmemd keeps page memory by default (a tmpfs: it survives tmemd, not a reboot).
PAGE_DIR=/run/tmemd-pages
: > /run/txq-relays

say() { echo "[scenario $(now)] $*"; }
now() { cut -d' ' -f1 /proc/uptime; }
secs() { cut -d. -f1 /proc/uptime; }

diagnostics() {
    echo "----- diagnostics -----"
    xl list 2>&1
    for f in "$CONSOLE_DIR"/guest-*.log; do
        [ -f "$f" ] || continue
        echo "--- last 25 lines of $f ---"
        tail -n 25 "$f" | tr -d '\r' | cut -c1-600
    done
    if [ -f "$TMEMD_LOG" ]; then
        echo "--- last 40 lines of $TMEMD_LOG ---"
        tail -n 40 "$TMEMD_LOG" | cut -c1-600
    fi
    if [ -S "$CONTROL_SOCK" ]; then
        echo "--- tmem list --json ---"
        timeout 5 tmem list --json 2>&1 | cut -c1-2000
    fi
    echo "----- end of diagnostics -----"
}

fail() {
    diagnostics
    echo "TXQ-FAIL ${TXQ_SCENARIO:-scenario}: $*"
    exit 1
}

ok() { echo "TXQ-CHECK ok [$(now)]: $*"; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every second until it succeeds
# (every process costs a lot in a PV dom0 under TCG: don't poll faster).
wait_for() {
    _limit=$1 _what=$2
    shift 2
    _t0=$(secs)
    until "$@" >/dev/null 2>&1; do
        [ $(( $(secs) - _t0 )) -lt "$_limit" ] || fail "timeout after ${_limit}s: $_what"
        sleep 1
    done
}

# Show a log as it grows on our console, one prefix per line; drop the guest's per-second
# status lines (they stay in the file for the checks).
relay() {
    (
        while [ ! -e "$2" ]; do sleep 0.2; done
        tail -n +1 -f "$2" 2>/dev/null | sed -n "s/\r\$//; /\"type\":\"status\"/!s/^/[$1] /p"
    ) &
    echo $! >> /run/txq-relays
}

# ---------------------------------------------------------------- tmemd
tmemd_pid() { cat /run/txq-tmemd.pid 2>/dev/null; }

# tmemd_start [ARGS...]: start tmemd in the background and wait for its control socket.
tmemd_start() {
    [ -f "$TMEMD_LOG" ] || { : > "$TMEMD_LOG"; relay tmemd "$TMEMD_LOG"; }
    echo "=== tmemd $* (uptime $(now))" >> "$TMEMD_LOG"
    tmemd --mem-limit 64M "$@" >> "$TMEMD_LOG" 2>&1 &
    echo $! > /run/txq-tmemd.pid
    wait_for 30 "tmemd control socket answers" tmem list --json
    ok "tmemd up (pid $(tmemd_pid))"
}

# tmemd_stop SIGNAL: signal tmemd and wait until it is gone.
tmemd_stop() {
    _pid=$(tmemd_pid)
    [ -n "$_pid" ] || return 0
    kill "-$1" "$_pid" 2>/dev/null
    _t0=$(secs)
    while kill -0 "$_pid" 2>/dev/null; do
        # reap it if it is our child (it is: started from this shell)
        [ $(( $(secs) - _t0 )) -lt 20 ] || { kill -9 "$_pid"; fail "tmemd ignored SIG$1 for 20s"; }
        sleep 0.2
    done
    wait "$_pid" 2>/dev/null
    rm -f /run/txq-tmemd.pid
}

tmemd_log_has() { grep -q -- "$1" "$TMEMD_LOG"; }

# ---------------------------------------------------------------- domUs
# guest_start NAME TMEM-GUEST-ARGS...: create a PV domU running tmem-guest with these args
# (GUEST_PAUSED=1: leave it paused; `xl unpause NAME` starts it).
guest_start() {
    _name=$1
    shift
    _args=$(echo "$*" | tr ' ' ',')
    rm -f "$CONSOLE_DIR/guest-$_name.log"
    cat > "/etc/xen/$_name.cfg" <<EOF
name = "$_name"
type = "pv"
kernel = "/boot/vmlinuz"
ramdisk = "/boot/domu.cpio.gz"
extra = "console=hvc0 quiet loglevel=1 tmemxq.args=$_args"
memory = 192
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
EOF
    say "xl create $_name (tmem-guest $*)"
    xl create ${GUEST_PAUSED:+-p} "/etc/xen/$_name.cfg" >/tmp/xl-create-$_name.log 2>&1 \
        || { cat /tmp/xl-create-$_name.log; fail "xl create $_name"; }
    relay "$_name" "$CONSOLE_DIR/guest-$_name.log"
}

guest_log() { tr -d '\r' < "$CONSOLE_DIR/guest-$1.log" 2>/dev/null; }
guest_domid() { xl domid "$1" 2>/dev/null; }

# guest_wait NAME PATTERN SECONDS: wait for a line in the guest's console.
guest_has() { guest_log "$1" | grep -q -- "$2"; }
guest_wait() { wait_for "$3" "domU $1 printed '$2'" guest_has "$1" "$2"; }

# guest_exit NAME SECONDS: wait for tmem-guest to finish in domU NAME; set GUEST_RC to its
# exit code and save its last JSON "final" line in /tmp/NAME.final.json.
guest_exit() {
    guest_wait "$1" "TXQ-GUEST-EXIT rc=" "$2"
    guest_log "$1" | grep '"type":"final"' | tail -n 1 > "/tmp/$1.final.json"
    GUEST_RC=$(guest_log "$1" | sed -n 's/.*TXQ-GUEST-EXIT rc=\([0-9]*\).*/\1/p' | tail -n 1)
}

# last_status NAME FILE: the guest's most recent JSON status line.
last_status() { guest_log "$1" | grep '"type":"status"' | tail -n 1 > "$2"; }

# Arguments every real-Xen guest gets: JSON, a status line per second, and a short pause
# between operations so that busy guests leave CPU to dom0 and tmemd under TCG.
XEN_GUEST="--transport xen --json --report-interval 1 --pace-us ${TXQ_PACE_US:-300}"

# guest_json NAME JQ-EXPRESSION: did any of the guest's status (or final) lines so far satisfy
# it? (Lines stay in the console log, so a check cannot miss a state the guest already left.)
guest_json() {
    guest_log "$1" | grep -E '^\{.*"type":"(status|final)"' > "/tmp/$1.statuses.json"
    [ -s "/tmp/$1.statuses.json" ] && jq -e -s "any(.[]; $2)" "/tmp/$1.statuses.json" >/dev/null 2>&1
}
# wait_json NAME SECONDS JQ-EXPRESSION DESCRIPTION
wait_json() {
    wait_for "$2" "domU $1: $4" guest_json "$1" "$3"
    ok "domU $1: $4"
}
# Every pool mapped to a real backend pool (none fake, none refused, none lost).
ALL_MAPPED='.connected and (.pools | length > 0) and all(.pools[]; .real_id != null and .error == null and (.lost | not))'

# list_has FILE JQ-EXPRESSION: take a `tmem list --json` snapshot into FILE; does it satisfy it?
list_has() { tmem list --json > "$1" 2>/dev/null && jq -e "$2" "$1" >/dev/null 2>&1; }

# Connected and every pool real, allowing pools that reported a loss (after a tmemd restart).
REMAPPED='.connected and (.pools | length > 0) and all(.pools[]; .real_id != null and .error == null)'

# tmem_list FILE: `tmem list --json` into FILE.
tmem_list() { tmem list --json > "$1" 2>/tmp/tmem-list.err || { cat /tmp/tmem-list.err; fail "tmem list --json"; }; }

# jcheck FILE JQ-EXPRESSION DESCRIPTION: the JSON document must satisfy the expression.
jcheck() {
    if jq -e "$2" "$1" >/dev/null 2>&1; then
        ok "$3"
    else
        echo "--- $1 ---"; cut -c1-3000 "$1"; echo
        fail "$3 (jq: $2)"
    fi
}

# Runs when a scenario exits, pass or fail: no domU, no tmemd, no relay survives it.
txq_cleanup() {
    _rc=$?
    for d in $(xl list 2>/dev/null | awk 'NR>1 && $2 != 0 {print $1}'); do
        xl destroy "$d" 2>/dev/null
    done
    _pid=$(tmemd_pid)
    if [ -n "$_pid" ]; then
        kill -TERM "$_pid" 2>/dev/null
        _n=0
        while kill -0 "$_pid" 2>/dev/null && [ $_n -lt 50 ]; do sleep 0.2; _n=$((_n + 1)); done
        kill -KILL "$_pid" 2>/dev/null
        rm -f /run/txq-tmemd.pid
    fi
    # Page memory outlives tmemd by design; the next scenario starts from an empty one.
    rm -rf "$PAGE_DIR"
    sleep 0.5
    for p in $(cat /run/txq-relays 2>/dev/null); do
        pkill -P "$p" 2>/dev/null; kill "$p" 2>/dev/null
    done
    rm -f "$TMEMD_LOG"
    exit $_rc
}
