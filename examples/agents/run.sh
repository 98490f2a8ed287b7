#!/bin/sh
# Stand-in for a coding agent: ./agents/run.sh STAGE [FILE]
# Says what it was asked, takes a moment (EXAMPLE_AGENT_SECONDS, default 1), leaves
# its work in FILE (default STAGE/NOTES.md; a path the task owns) and reports its
# confidence in $ABREAST_OUTPUT, which `gate:` reads.
stage=$1
file=${2:-$stage/NOTES.md}
echo "stage $stage (task $ABREAST_TASK_ID, attempt $ABREAST_ATTEMPT): ${ABREAST_PROMPT:-no prompt}"
if [ -n "$ABREAST_FEEDBACK" ]; then echo "told: $ABREAST_FEEDBACK"; fi
sleep "${EXAMPLE_AGENT_SECONDS:-1}"
mkdir -p "$(dirname "$file")"
echo "$stage: done (attempt $ABREAST_ATTEMPT)" >> "$file"
if [ "$stage" = critique ]; then
  # A reviewer: the first research is sent back once (send_back in stage-groups.yaml).
  if [ "$(wc -l < research/NOTES.md)" -lt 2 ]; then
    decision=REQUEST_CHANGES changes="cite the sources of each requirement"
  else
    decision=APPROVED changes=""
  fi
  printf '{"stage": "critique", "decision": "%s", "changes": "%s"}\n' "$decision" "$changes" \
    > "$ABREAST_OUTPUT"
else
  printf '{"stage": "%s", "confidence": 0.9}\n' "$stage" > "$ABREAST_OUTPUT"
fi
