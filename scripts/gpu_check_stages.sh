# Sourced by scripts/gpu_check.sh (and by its tests): the stage runner.
#
# Needs LOGS (a folder), SUMMARY (a file), START and DEADLINE (epoch seconds), BUDGET (seconds, for
# messages) and KNOWN (the plan's stage names, in order). ONLY, when set, is a comma-separated list
# of the stages to run ("" runs all); DRY_RUN=1 records each stage's command (status DRY) and runs
# nothing.
# A stage gets min(its own limit, the time left before DEADLINE), so the whole check ends by itself
# inside its budget however slow a stage is: a lease runs the script twice within 15 minutes only if
# each run stops in time to print its summary. A stage that finds less than MIN_STAGE_S left is not
# started and reads NOTIME; `--only` reruns such stages in a second call.

MIN_STAGE_S=${MIN_STAGE_S:-5}

# stage NAME LIMIT_S COMMAND...: run with a time limit, log to $LOGS/NAME.log, record one summary row:
# name, status, start (s after START), seconds, the log's last line. Rows are appended by concurrent
# stages; each is one short write, so lines do not interleave.
stage() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then
    return 0
  fi
  local t0 left rc status
  t0=$(date +%s)
  left=$((DEADLINE - t0))
  if [ "$left" -lt "$MIN_STAGE_S" ]; then
    echo "NOTIME: not started, the run's ${BUDGET}s budget is spent" >"$LOGS/$name.log"
    _stage_row "$name" NOTIME "$t0"
    return 0
  fi
  if [ "$left" -lt "$limit" ]; then
    limit=$left
  fi
  echo "== $name (limit ${limit}s): $*" >"$LOGS/$name.log"
  if [ "${DRY_RUN:-0}" = 1 ]; then
    _stage_row "$name" DRY "$t0"
    return 0
  fi
  # bash -c: the command may be one of the caller's (exported) functions
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >>"$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=PASS ;;
    124 | 137) status=TIMEOUT; echo "TIMEOUT after ${limit}s" >>"$LOGS/$name.log" ;;
    77) status=SKIP ;;
    *) status=FAIL ;;
  esac
  _stage_row "$name" "$status" "$t0"
  return 0
}

_stage_row() {  # _stage_row NAME STATUS T0
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(($3 - START))" "$(($(date +%s) - $3))" \
    "$(tail -n 1 "$LOGS/$1.log" | tr '\t' ' ' | cut -c1-90)" >>"$SUMMARY"
}

# print_summary: the rows in the order the stages started (ties in the order of $KNOWN, the plan)
print_summary() {
  printf '%-22s %-8s %5s %7s  %s\n' stage status start seconds "last log line"
  awk -F '\t' -v OFS='\t' -v plan="${KNOWN:-}" \
    'BEGIN { n = split(plan, names, " "); for (i = 1; i <= n; i++) at[names[i]] = i }
     { print $3, at[$1] + 0, $0 }' "$SUMMARY" | sort -t "$(printf '\t')" -k1,1n -k2,2n | cut -f3- |
    while IFS=$'\t' read -r name status start secs last; do
      printf '%-22s %-8s %5s %7s  %s\n' "$name" "$status" "$start" "$secs" "$last"
    done
}

# summary_ok: 0 when no stage failed, timed out or was left without time
summary_ok() {
  awk -F '\t' '$2 == "FAIL" || $2 == "TIMEOUT" || $2 == "NOTIME" {bad = 1} END {exit bad}' "$SUMMARY"
}

# stage_passed NAME: the stage ran and passed (or would have run, in a dry run)
stage_passed() {
  grep -qE "^$1"$'\t'"(PASS|DRY)"$'\t' "$SUMMARY"
}
