#!/usr/bin/env bash
# make test: runs every stage (vet with gofmt and staticcheck, unit under the
# race detector, integration) even when an earlier one fails, then prints one
# summary of what failed and exits non-zero if
# anything did. Each stage's output is kept in $OUT/<stage>.log.
set -uo pipefail
OUT=${OUT:-_output}
MAKE=${MAKE:-make}
mkdir -p "$OUT"
stages=(vet unit integration)
failed=()
declare -A took
for stage in "${stages[@]}"; do
  printf '\033[1m==> make %s\033[0m\n' "$stage"
  start=$SECONDS
  "$MAKE" --no-print-directory "$stage" 2>&1 | tee "$OUT/make-$stage.log"
  rc=${PIPESTATUS[0]}
  took[$stage]=$((SECONDS - start))
  [ "$rc" -eq 0 ] || failed+=("$stage")
done

echo
printf '\033[1m==> make test summary\033[0m\n'
for stage in "${stages[@]}"; do
  status=passed
  for f in "${failed[@]}"; do [ "$f" = "$stage" ] && status=FAILED; done
  printf '  %-12s %-7s %4d s  (%s)\n' "$stage" "$status" "${took[$stage]}" "$OUT/make-$stage.log"
  if [ "$status" = FAILED ]; then
    # The failing tests and packages, as go test names them; a stage that
    # failed before any test ran (vet, a build) shows its last lines.
    if grep -qE '^\s*--- FAIL|^FAIL\s' "$OUT/make-$stage.log"; then
      grep -E '^\s*--- FAIL|^FAIL\s|^panic:' "$OUT/make-$stage.log" | sed 's/^/      /' | head -60
    else
      tail -n 15 "$OUT/make-$stage.log" | sed 's/^/      /'
    fi
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "make test: FAILED (${failed[*]})"
  exit 1
fi
echo "make test: every stage passed"
