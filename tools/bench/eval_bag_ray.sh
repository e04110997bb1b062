#!/usr/bin/env bash
# eval-bag over 8 generated bags and a broken one: one process against --workers 2 on a local
# Ray (both --fresh), then a second run that reads the results back (docs/results.md, "Many
# bags"). Needs the Ray extra (make setup-ray). EXTRA adds eval-bag options, TAG names the
# outputs, e.g.
#   TAG=emb EXTRA="--asr embedded --set perception.asr.model=tiny.en" tools/bench/eval_bag_ray.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
D=runs/ray
T=${TAG:-bag}
EXTRA=${EXTRA:-}
mkdir -p "$D/bags"
for i in 0 1 2 3 4 5 6 7; do
  [ -d "$D/bags/b$i" ] || $PY -m erc_ros make-bag --out "$D/bags/b$i" --minutes 1 --seed "$i" >/dev/null
done
if [ ! -d "$D/bags/broken" ]; then  # a bag cut short: its MCAP has no summary and no end
  cp -r "$D/bags/b0" "$D/bags/broken"
  head -c 300000 "$D/bags/b0/b0.mcap" > "$D/bags/broken/b0.mcap"
fi
B=$(ls -d "$D"/bags/*)
run() { echo "== $*"; /usr/bin/time -f "wall %e s" $PY -m erc_ros eval-bag $B --quiet $EXTRA "$@" || true; }
run --fresh --out "$D/$T-single" --json "$D/$T-single.json"
run --fresh --workers 2 --threads 1 --out "$D/$T-workers2" --json "$D/$T-workers2.json"
run --workers 2 --threads 1 --out "$D/$T-resumed" --json "$D/$T-resumed.json"
$PY - "$D" "$T" <<'PY'
import csv, json, sys
d, t = sys.argv[1:]
rows = {k: [{c: v for c, v in r.items() if c != "latency_ms"}
            for r in csv.DictReader(open(f"{d}/{t}-{k}/utterances.csv"))]
        for k in ("single", "workers2", "resumed")}
for k in ("single", "workers2", "resumed"):
    r = json.load(open(f"{d}/{t}-{k}.json"))
    print(f"{k:9} whole run {r['elapsed_s']:6.1f} s  wF1 {r['weighted_f1']:.3f}  "
          f"resumed {r['resumed']}  failed {len(r['failed'])}  rows {len(rows[k])}")
print("rows identical to the single-process run:",
      rows["workers2"] == rows["single"], rows["resumed"] == rows["single"])
PY
