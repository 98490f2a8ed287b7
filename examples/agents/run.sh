#!/bin/sh
# Stand-in for a coding agent: say what stage this is and what it was asked.
echo "stage $1 (task $ABREAST_TASK_ID, attempt $ABREAST_ATTEMPT): ${ABREAST_PROMPT:-no prompt}"
