#!/usr/bin/env bash
# Regenerate the tables and figures of experiments/NAME from `flowlab run configs/NAME.toml`.
#   bash experiments/regenerate.sh [NAME ...]     (default: every study with a config)
# Each study runs into runs/NAME (resumable; delete it to recompute), then its report table goes to
# experiments/NAME/table.md (and into the README between <!-- table --> and <!-- /table -->) and
# its figures to experiments/NAME/*.png; the README states the question, the prediction and what
# the table shows.
set -euo pipefail
cd "$(dirname "$0")/.."
flowlab=${FLOWLAB:-flowlab}
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for d in experiments/*/; do n=$(basename "$d"); [ -f "configs/$n.toml" ] && names+=("$n"); done
fi
for n in "${names[@]}"; do
  echo "== $n"
  start=$(date +%s)
  $flowlab run "configs/$n.toml" --out "runs/$n" --quiet --jobs 1 || echo "(exit code $?)"
  echo "   $(( $(date +%s) - start )) s end to end"
  $flowlab report "runs/$n" --markdown "runs/$n/report.md" > /dev/null
  sed -n '/^|/p' "runs/$n/report.md" > "experiments/$n/table.md"
  cp runs/"$n"/figures/*.png "experiments/$n/"
  # the README's table lies between <!-- table --> and <!-- /table -->: replace it
  python3 - "experiments/$n" <<'PY'
import pathlib, re, sys
d = pathlib.Path(sys.argv[1])
readme, table = d / "README.md", (d / "table.md").read_text()
text = readme.read_text()
new = re.sub(r"(<!-- table -->\n).*?(<!-- /table -->)", lambda m: m[1] + table + m[2], text, flags=re.S)
readme.write_text(new)
PY
done
