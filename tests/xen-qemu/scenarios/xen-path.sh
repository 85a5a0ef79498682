# xen-path (manual, not in auto; issue 14): the Xen transport against the local transport in
# the same dom0 and the same run, and a domU that spins while it waits for an answer against
# one that does not. Each case is `tmem-guest bench` (put then get N pages, every page
# verified) synchronous (window 1) and pipelined (window 128); a table of pages per second and
# the ratios is printed ("XEN-PATH" lines). It fails only if a bench fails or cannot run.
# Run: tests/xen-qemu/run.sh xen-path   (TXQ_XP_PAGES: pages per case, default 3000)
# txq-timeout: 1500

PAGES=${TXQ_XP_PAGES:-3000}
row() { echo "XEN-PATH $*"; }
# bench_json FILE: the bench's JSON line in FILE (last one; -a: a console log can hold NUL bytes, and grep would then print only "Binary file matches").
bench_json() { grep -a '"type":"bench"' "$1" | tail -n 1 | sed 's/^[^{]*//'; }
# rate FILE put|get: whole pages per second (read with sed: a domU's console line can carry
# bytes around the JSON that make jq give up on it).
rate() { sed -n "s/.*\"$2\":{\"pages_per_s\":\([0-9]*\).*/\1/p" "$1" | head -n 1; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%d", a * 100 / b; else printf "-" }'; }

tmemd_start
wait_for 60 "tmemd serves Xen" tmemd_log_has "xen transport ready"

# Local transport, in dom0 (same tmemd, same machine).
for w in 1 128; do
    for spin in 50 0; do
        f=/tmp/xp-local-w$w-s$spin.json
        tmem-guest bench --socket /run/tmemd/tmemd.sock --domid $((100 + w + spin)) --pages "$PAGES" \
            --window $w --spin-us $spin > /tmp/xp.out 2>&1 || { cat /tmp/xp.out; fail "local bench w$w s$spin"; }
        bench_json /tmp/xp.out > "$f"
        jq -e '.verification_errors == 0 and .get.hits == .pages' "$f" >/dev/null || fail "local bench w$w s$spin: $(cat "$f")"
        ok "local window $w spin ${spin}us: put $(rate "$f" put)/s get $(rate "$f" get)/s"
    done
done

# Xen transport, one domU per case (each exits after its bench).
n=0
for w in 1 128; do
    for spin in 50 0; do
        n=$((n + 1))
        g=xp$n
        guest_start $g bench --transport xen --pages "$PAGES" --window $w --spin-us $spin --wait 120
        guest_exit $g 900
        [ "$GUEST_RC" = 0 ] || fail "$g: bench exited with '$GUEST_RC'"
        # (through a file: the busybox dom0 has no /dev/stdin)
        guest_log $g > /tmp/$g.console
        bench_json /tmp/$g.console > /tmp/xp-xen-w$w-s$spin.json
        f=/tmp/xp-xen-w$w-s$spin.json
        grep -q '"verification_errors":0' "$f" && grep -q "\"hits\":$PAGES," "$f" && [ -n "$(rate "$f" put)" ] || fail "$g: $(cat "$f")"
        ok "xen window $w spin ${spin}us: put $(rate "$f" put)/s get $(rate "$f" get)/s"
        wait_for 60 "domain $g gone" sh -c "! xl domid $g"
    done
done

row "pages per case: $PAGES; rates in pages/s; ratio = xen / local"
row "window spin_us | local put | local get | xen put | xen get | xen/local put | xen/local get"
for w in 1 128; do
    for spin in 50 0; do
        l=/tmp/xp-local-w$w-s$spin.json; x=/tmp/xp-xen-w$w-s$spin.json
        row "$w $spin | $(rate $l put) | $(rate $l get) | $(rate $x put) | $(rate $x get) | $(pct "$(rate $x put)" "$(rate $l put)")% | $(pct "$(rate $x get)" "$(rate $l get)")%"
    done
done
for t in local xen; do
    for w in 1 128; do
        a=/tmp/xp-$t-w$w-s50.json; b=/tmp/xp-$t-w$w-s0.json
        row "$t window $w: no spin / spin 50us = put $(pct "$(rate $b put)" "$(rate $a put)")%, get $(pct "$(rate $b get)" "$(rate $a get)")%"
    done
done
tmemd_stop TERM
