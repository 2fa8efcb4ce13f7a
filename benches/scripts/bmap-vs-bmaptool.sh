#!/usr/bin/env bash
# `blockmap bmap create/copy` against `bmaptool create/copy` on a root-filesystem-like image:
# a 4 GiB sparse ext4 image with /usr/share and /usr/bin copied in (about 1 GiB of data),
# built once under $BMAP_BENCH_DIR (default target/bench-data/bmap; needs root for the loop
# mount). Prints hyperfine's table (warm cache, copies with verification and the final fsync,
# destination removed before each run) and each tool's peak RSS (/usr/bin/time).
# Needs hyperfine, bmaptool (bmap-tools) and GNU time (time).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${BMAP_BENCH_DIR:-$root/target/bench-data/bmap}
runs=${RUNS:-7}
# Where the copies go (default: beside the image); a tmpfs shows the tools' own cost, without
# the disk's.
out=${BMAP_BENCH_OUT:-$dir}
mkdir -p "$dir"
cd "$root"
cargo build --release -q -p blockmap-cli
bin=$root/target/release/blockmap

image=$dir/rootfs.img
if [ ! -s "$image.done" ]; then
    rm -f "$image"
    truncate -s 4G "$image"
    mkfs.ext4 -q -F -E nodiscard "$image"
    mnt=$(mktemp -d)
    mount -o loop "$image" "$mnt"
    trap 'umount "$mnt" 2>/dev/null; rmdir "$mnt"' EXIT
    cp -a /usr/share /usr/bin "$mnt"/
    umount "$mnt"
    rmdir "$mnt"
    trap - EXIT
    sync "$image"
    echo built > "$image.done"
fi
cd "$dir"
bmaptool create -o theirs.bmap "$image" 2>/dev/null
cat "$image" > /dev/null # warm cache

echo "== create (uptime: $(uptime))"
hyperfine -w 1 -r "$runs" -N --export-json create.json \
    "$bin bmap create -o ours.bmap $image" \
    "bmaptool create -o theirs2.bmap $image"
echo "== copy with verification and fsync"
hyperfine -w 1 -r "$runs" -N --prepare "rm -f $out/out1.img $out/out2.img" --export-json copy.json \
    "$bin bmap copy --bmap theirs.bmap $image $out/out1.img" \
    "bmaptool copy --bmap theirs.bmap $image $out/out2.img"
echo "== peak RSS (KiB); the copies compared with the image"
rm -f $out/out1.img $out/out2.img
for cmd in "$bin bmap create -o ours.bmap $image" "bmaptool create -o theirs2.bmap $image" \
    "$bin bmap copy --bmap theirs.bmap $image $out/out1.img" "bmaptool copy --bmap theirs.bmap $image $out/out2.img"; do
    /usr/bin/time -f "%M KiB  $cmd" $cmd > /dev/null 2> time.err || { cat time.err; exit 1; }
    tail -n1 time.err
done
cmp "$image" $out/out1.img
cmp "$image" $out/out2.img
python3 - <<'PY'
import json
for name in ("create", "copy"):
    r = json.load(open(f"{name}.json"))["results"]
    ours, theirs = r[0]["median"], r[1]["median"]
    print(f"{name}: blockmap {ours:.3f} s, bmaptool {theirs:.3f} s (medians): {theirs / ours:.2f}x")
PY
echo "uptime: $(uptime)"
