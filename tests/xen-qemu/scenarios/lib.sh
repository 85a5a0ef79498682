# Helpers for the dom0 scenario scripts (tests/xen-qemu/scenarios/*.sh), sourced by dom0's
# /init before each scenario. POSIX sh (busybox). A scenario fails by calling `fail`, which
# prints diagnostics first and then a TXQ-FAIL marker, so the host's log tail shows both.

TMEMD_LOG=/var/log/tmemd.log
CONSOLE_DIR=/var/log/xen/console
CONTROL_SOCK=/run/tmemd/control.sock
# Where tmemd keeps page memory by default (a tmpfs: it survives tmemd, not a reboot).
PAGE_DIR=/run/tmemd-pages
: > /run/txq-relays
: > /run/txq-cleanup
# guest_json_since's files of an earlier scenario would show in this one's diagnostics.
rm -f /tmp/*.since.json /tmp/*.before.json /tmp/*.numbered.json

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
    # Last, so it is in the tail CI prints: where the guests of guest_json_since checks stood.
    for f in /tmp/*.since.json; do
        [ -s "$f" ] || continue
        _g=$(basename "$f" .since.json)
        _pick='{connected, map: .counters.map, swap_stored: .guest.swap_stored, swap_loaded: .guest.swap_loaded, errors: .guest.verification_errors}'
        echo "--- $_g, status lines: before the mark, first and last after it ($(wc -l < "$f") after) ---"
        if [ -s "/tmp/$_g.before.json" ]; then
            jq -c "$_pick" "/tmp/$_g.before.json" 2>&1 | cut -c1-400
        else
            echo "(no status line before the mark)"
        fi
        head -n 1 "$f" | jq -c "$_pick" 2>&1 | cut -c1-400
        tail -n 1 "$f" | jq -c "$_pick" 2>&1 | cut -c1-400
    done
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

# tmemd_start [ARGS...]: start tmemd in the background and wait for its control socket
# (TMEMD_MEM_LIMIT: its --mem-limit, default 64M). If tmemd exits instead, fail at once with
# its last log line and TMEMD_START_HINT.
tmemd_start() {
    [ -f "$TMEMD_LOG" ] || { : > "$TMEMD_LOG"; relay tmemd "$TMEMD_LOG"; }
    echo "=== tmemd --mem-limit ${TMEMD_MEM_LIMIT:-64M} $* (uptime $(now))" >> "$TMEMD_LOG"
    tmemd --mem-limit "${TMEMD_MEM_LIMIT:-64M}" "$@" >> "$TMEMD_LOG" 2>&1 &
    echo $! > /run/txq-tmemd.pid
    _t0=$(secs)
    until tmem list --json >/dev/null 2>&1; do
        if ! kill -0 "$(tmemd_pid)" 2>/dev/null; then
            wait "$(tmemd_pid)"
            _rc=$?
            rm -f /run/txq-tmemd.pid
            fail "tmemd exited at start (status $_rc): $(grep -v '^===' "$TMEMD_LOG" | tail -n 1)${TMEMD_START_HINT:+ ($TMEMD_START_HINT)}"
        fi
        [ $(( $(secs) - _t0 )) -lt 30 ] || fail "timeout after 30s: tmemd control socket answers"
        sleep 1
    done
    ok "tmemd up (pid $(tmemd_pid))"
}

# migrate_tmemd_start SPILL PARK MEM_LIMIT: the tmemd of the migrate scenarios: domain "ms"
# gets a swap disk of SWAP_MIB spilling to a tmpfs mounted at SPILL (unmounted at cleanup),
# released domains are parked for PARK seconds; then wait until it serves Xen.
migrate_tmemd_start() {
    mkdir -p "$1"
    mount -t tmpfs -o size=$((SWAP_MIB + 64))m swapspill "$1" || fail "mount a tmpfs on $1"
    on_cleanup "umount $1"
    cat > /etc/tmemd-migrate.toml <<EOF
swap_spill_dir = "$1"
park_timeout_secs = $2
[[swap_disk]]
domains = ["ms"]
size = "${SWAP_MIB}MiB"
device = "xvdz"
EOF
    TMEMD_MEM_LIMIT=$3 \
        TMEMD_START_HINT="this scenario needs a tmemd that parks domains (issue 12)" \
        tmemd_start -c /etc/tmemd-migrate.toml
    wait_for 60 "tmemd serves Xen" tmemd_log_has "xen transport ready"
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
# (GUEST_PAUSED=1: leave it paused; `xl unpause NAME` starts it). GUEST_MEMORY: MiB (192);
# GUEST_EXTRA: more kernel command line; GUEST_TYPE: pv (default) or pvh; GUEST_DISK: an xl disk spec ('phy:/dev/loop0,xvdb,w').
guest_start() {
    _name=$1
    shift
    _args=$(echo "$*" | tr ' ' ',')
    rm -f "$CONSOLE_DIR/guest-$_name.log"
    cat > "/etc/xen/$_name.cfg" <<EOF
name = "$_name"
type = "${GUEST_TYPE:-pv}"
kernel = "/boot/vmlinuz"
ramdisk = "/boot/domu.cpio.gz"
extra = "console=hvc0 quiet loglevel=1 tmemxq.args=$_args${GUEST_EXTRA:+ $GUEST_EXTRA}"
memory = ${GUEST_MEMORY:-192}
vcpus = 1${GUEST_DISK:+
disk = [ '$GUEST_DISK' ]}
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
EOF
    say "xl create $_name (${GUEST_EXTRA:+$GUEST_EXTRA }${GUEST_DISK:+disk $GUEST_DISK }args: $*)"
    xl create ${GUEST_PAUSED:+-p} "/etc/xen/$_name.cfg" >/tmp/xl-create-$_name.log 2>&1 \
        || { cat /tmp/xl-create-$_name.log; fail "xl create $_name"; }
    relay "$_name" "$CONSOLE_DIR/guest-$_name.log"
}

# A domain received by `xl migrate` is created as NAME--incoming and renamed at the end;
# xenconsoled names its log by the name it first saw, so NAME's console continues there.
guest_log() { cat "$CONSOLE_DIR/guest-$1.log" "$CONSOLE_DIR/guest-$1--incoming.log" 2>/dev/null | tr -d '\r'; }
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

# on_cleanup COMMAND: run COMMAND (a shell line) when the scenario exits, after the domUs and
# tmemd are gone; last registered, first run.
on_cleanup() { { echo "$*"; cat /run/txq-cleanup; } > /run/txq-cleanup.new; mv /run/txq-cleanup.new /run/txq-cleanup; }

# load_module NAME: insmod /lib/modules/NAME.ko unless it is loaded (no modules.dep here).
load_module() {
    grep -q "^$(echo "$1" | tr - _) " /proc/modules || insmod "/lib/modules/$1.ko" || fail "insmod $1"
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
    while read -r _c; do sh -c "$_c" 2>/dev/null; done < /run/txq-cleanup
    sleep 0.5
    for p in $(cat /run/txq-relays 2>/dev/null); do
        pkill -P "$p" 2>/dev/null; kill "$p" 2>/dev/null
    done
    rm -f "$TMEMD_LOG"
    exit $_rc
}

# ---------------------------------------------------------------- swap jobs (guest/swapjob.sh)
# The memhog job of every swap run (the same one for each kind of swap, so the runs compare),
# the domU's memory in MiB and the swap device's size in MiB. The job must overcommit the
# domU at least 2x; 512 random bytes per page compress about 7:1 with lz4 (without that, zram
# could not hold twice the domU's RAM: it stores incompressible pages at full size).
SWAP_MEMHOG=${TXQ_MEMHOG_ARGS:---mib 256 --passes 2 --rewrite --seed 7 --random-bytes 512}
SWAP_GUEST_MIB=${TXQ_SWAP_GUEST_MIB:-128}
SWAP_MIB=${TXQ_SWAP_MIB:-384}
# The uuid half that marks a swap disk's pool: ASCII "tmemswap", little-endian (jq reads it
# as a double, which compares equal to the same literal).
SWAP_UUID_TAG=8097884942629170548
# swap_pool_is DEVID: a jq test on a pool: the persistent pool of swap disk DEVID. tmem list
# prints a uuid as [u64, u64] or as its 16 bytes in the usual text form; both are accepted.
swap_pool_is() {
    _le=$(printf '%016x' "$1" | sed 's/../& /g' | awk '{for (i = NF; i > 0; i--) printf "%s", $i}')
    _text="746d656d-7377-6170-$(echo "$_le" | cut -c1-4)-$(echo "$_le" | cut -c5-16)"
    echo "(.kind == \"PP\" and (.uuid | if type == \"string\" then . == \"$_text\" else .[0] == $SWAP_UUID_TAG and .[1] == $1 end))"
}

# swap_guest_start NAME DEV [MEMHOG-ARGS...]: a domU running the swap job on /dev/DEV ("zram":
# zram0 of SWAP_MIB with lz4), memhog with these args (default SWAP_MEMHOG). SWAP_WAIT: how
# long it waits for the device (s, default 300); it stays up to an hour after the job, for
# dom0's checks (dom0 destroys it). GUEST_DISK and GUEST_PAUSED pass through.
swap_guest_start() {
    _sname=$1 _sdev=$2
    shift 2
    [ $# -gt 0 ] || set -- $SWAP_MEMHOG
    GUEST_MEMORY=$SWAP_GUEST_MIB \
        GUEST_EXTRA="tmemxq.mode=swap tmemxq.swapdev=$_sdev tmemxq.swapsize=${SWAP_MIB}M tmemxq.swapwait=${SWAP_WAIT:-300} tmemxq.hold=3600" \
        guest_start "$_sname" "$@"
}

# guest_kv NAME TAG KEY: the number after KEY= on the guest's last "TAG " line.
guest_kv() { guest_log "$1" | grep -- "$2 " | tail -n 1 | tr ' ' '\n' | sed -n "s/^$3=\([0-9.]*\).*/\1/p"; }

# swap_finish NAME KIND SECONDS: wait for the swap job in domU NAME to end; it must have exited
# 0, memhog must have verified every page in every pass, overcommitted the domU's RAM at least
# 2x and really swapped, with no OOM kill. Prints the RESULT line (also kept in
# /tmp/swap-results for a summary) and sets SWAP_RESULT to it.
swap_finish() {
    _g=$1 _kind=$2
    guest_wait "$_g" "TXQ-GUEST-EXIT rc=" "$3"
    guest_log "$_g" > "/tmp/$_g.log"
    _rc=$(sed -n 's/.*TXQ-GUEST-EXIT rc=\([0-9]*\).*/\1/p' "/tmp/$_g.log" | tail -n 1)
    [ "$_rc" = 0 ] || fail "$_g ($_kind): the swap job exited with rc=$_rc: $(grep -E 'TXQ-GUEST-(WARN|MEMHOG|SWAPOFF)|"error"' "/tmp/$_g.log" | tail -n 3 | tr '\n' ' ')"
    grep -E '^\{"(start|pass|summary|error)"' "/tmp/$_g.log" > "/tmp/$_g.memhog.json"
    _mem=$(guest_kv "$_g" TXQ-GUEST-MEM MemTotal)
    _out=$(guest_kv "$_g" TXQ-GUEST-VMSTAT pswpout)
    _in=$(guest_kv "$_g" TXQ-GUEST-VMSTAT pswpin)
    _oom=$(guest_kv "$_g" TXQ-GUEST-VMSTAT oom_kill)
    _off=$(guest_kv "$_g" TXQ-GUEST-SWAPOFF seconds)
    [ -n "$_mem" ] && [ -n "$_out" ] && [ -n "$_oom" ] || fail "$_g ($_kind): the guest's MEM/VMSTAT lines are missing"
    jq -e -s '(map(select(.start)) | .[0].start) as $s | (map(select(.summary)) | .[0].summary) as $sum
        | [.[] | select(.pass != null)] as $p
        | $s != null and $sum != null and $sum.errors == 0 and ($p | length) == $s.passes + 1
          and all($p[]; .errors == 0 and .pages == $s.pages) and ([.[] | select(.error)] | length) == 0' \
        "/tmp/$_g.memhog.json" >/dev/null \
        || { cat "/tmp/$_g.memhog.json"; fail "$_g ($_kind): memhog did not verify every page in every pass"; }
    _mib=$(jq -s -r 'map(select(.start)) | .[0].start.mib' "/tmp/$_g.memhog.json")
    [ $((_mib * 1024)) -ge $((2 * _mem)) ] || fail "$_g ($_kind): memhog's $_mib MiB is less than 2x the domU's MemTotal ${_mem} kB"
    [ "$_oom" = 0 ] || fail "$_g ($_kind): the OOM killer ran $_oom times"
    # Pages that cannot have stayed in RAM must have been written to swap at least once.
    [ $((_out * 4)) -ge $((_mib * 1024 - _mem)) ] \
        || fail "$_g ($_kind): only $_out pages swapped out; $((_mib * 1024 - _mem)) kB did not fit in RAM"
    SWAP_RESULT="RESULT swap=$_kind $(jq -s -r '(map(select(.start)) | .[0].start) as $s
        | (map(select(.summary)) | .[0].summary) as $sum | [.[] | select(.pass != null)] as $p
        | "mib=\($s.mib) random_bytes=\($s.random_bytes // 4096) passes=\($s.passes) seconds=\($sum.seconds) fill_pps=\($p[0].pages_per_sec) verify_pps=\([$p[1:][] | .pages_per_sec | tostring] | join(","))"' \
        "/tmp/$_g.memhog.json") guest_ram_mib=$((_mem / 1024)) pswpout=$_out pswpin=$_in swapoff_s=$_off errors=0"
    echo "$SWAP_RESULT" >> /tmp/swap-results
    ok "$_g: memhog verified every byte, $((_mib * 1024 * 10 / _mem / 10)).$((_mib * 1024 * 10 / _mem % 10))x the domU's RAM, no OOM kill"
    ok "$SWAP_RESULT"
}

# guest_destroy NAME: xl destroy and wait until the domain is gone.
guest_destroy() {
    xl destroy "$1" || fail "xl destroy $1"
    wait_for 60 "domain $1 gone" sh -c "! xl domid $1"
}

# No pool reported lost, no swap page lost, so far.
NO_LOSS='.counters.map.losses == 0 and .counters.map.lost_pages == 0 and .guest.swap_lost == 0 and .guest.verification_errors == 0'

# guest_json_since NAME LINE JQ: like guest_json, over the status lines after console line
# LINE only; `$first` is the first of them, `$before` the last status line up to LINE (the
# first after it if there is none). Compare a counter that an event bumps with `$before`:
# when the event (a reattach after xl restore) comes before the guest's next status line,
# `$first` already counts it.
guest_json_since() {
    guest_log "$1" | grep -n '' | grep -E '^[0-9]+:\{.*"type":"(status|final)"' > "/tmp/$1.numbered.json"
    awk -F: -v l="$2" '$1 > l' "/tmp/$1.numbered.json" | cut -d: -f2- > "/tmp/$1.since.json"
    awk -F: -v l="$2" '$1 <= l' "/tmp/$1.numbered.json" | tail -n 1 | cut -d: -f2- > "/tmp/$1.before.json"
    [ -s "/tmp/$1.since.json" ] && jq -e -s --slurpfile b "/tmp/$1.before.json" \
        ".[0] as \$first | (\$b[0] // \$first) as \$before | any(.[]; $3)" "/tmp/$1.since.json" >/dev/null 2>&1
}
