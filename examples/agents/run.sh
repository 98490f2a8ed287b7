#!/bin/sh
# Stand-in for a coding agent: ./agents/run.sh STAGE [FILE]
# Says what it was asked, takes a moment (EXAMPLE_AGENT_SECONDS, default 1), leaves
# its work in FILE (default STAGE/NOTES.md; a path the task owns) and reports its
# confidence in $ABREAST_OUTPUT, which `gate:` reads.
stage=$1
file=${2:-$stage/NOTES.md}
echo "stage $stage (task $ABREAST_TASK_ID, attempt $ABREAST_ATTEMPT): ${ABREAST_PROMPT:-no prompt}"
sleep "${EXAMPLE_AGENT_SECONDS:-1}"
mkdir -p "$(dirname "$file")"
echo "$stage: done (attempt $ABREAST_ATTEMPT)" >> "$file"
printf '{"stage": "%s", "confidence": 0.9}\n' "$stage" > "$ABREAST_OUTPUT"
