"""Every kind of bad input: the message a user reads, and exit status 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_abreast

GOOD_TASK = "  a: {run: 'true'}\n"

CASES = {
    "bad_yaml": (
        "version: 1\ntasks:\n  a:\n    run: x\n   b: 1\n",
        [":5: invalid YAML", "indentation"],
    ),
    "bad_workflow_name": (  # the rule in words, not the regular expression
        "version: 1\nname: Bad Name\ntasks:\n" + GOOD_TASK,
        [":2: name: 'Bad Name' is not a valid workflow name", "1-63 characters of a-z"],
    ),
    "bad_key_variable": (
        "version: 1\nkeys:\n  k: {from: [lower-case]}\ntasks:\n" + GOOD_TASK,
        [":3: keys.k.from[0]: 'lower-case' is not an environment variable name"],
    ),
    "bad_upstream": (
        "version: 1\nkeys:\n  k: {from: [K1], upstream: 'ftp://x'}\ntasks:\n" + GOOD_TASK,
        [":3: keys.k.upstream: 'ftp://x' is not an http:// or https:// URL"],
    ),
    "section_not_a_mapping": (  # the user's words, not "instance of Events"
        "version: 1\nevents: yes\ntasks:\n" + GOOD_TASK,
        [":2: events must be a mapping of keys, not true/false", "allowed keys: nats, subject"],
    ),
    "needs_not_a_list": (
        "version: 1\ntasks:\n  a: {run: x, needs: b}\n  b: {run: y}\n",
        [":3: tasks.a.needs: should be a list (got 'b')", 'hint: write needs: ["b"]'],
    ),
    "env_not_a_mapping": (
        "version: 1\ntasks:\n  a: {run: x, env: [X]}\n",
        [":3: tasks.a.env: should be a mapping of names to values", "write env: {NAME: value}"],
    ),
    "unclosed_quote": (  # named where the quote opens, not after the last line
        'version: 1\ntasks:\n  a:\n    run: "echo hi\n',
        [":4: invalid YAML", "quoted scalar that starts on this line", "close the quote"],
    ),
    "unclosed_bracket_at_the_end": (  # the parser says the end of the file: the last line
        "version: 1\ntasks:\n  a: {run: x}\n  b: [\n\n",
        [":4: invalid YAML", "close the quote or bracket"],
    ),
    "line_that_is_not_key_value": (  # named where it is, not on the next line
        "version: 1\nchange\ntasks:\n  a: {run: x}\n",
        [":2: invalid YAML", "write `key: value`"],
    ),
    "a_terminals_colour_codes_pasted_in": (  # said with its line, not "<unicode string>"
        'version: 1\ntasks:\n  a: {run: "echo \x1b[31mred"}\n',
        [":3: invalid YAML: character U+001B on this line", "terminal's colour codes", "\\e"],
    ),
    "a_blank_command": (  # the shell runs nothing, and the task "succeeds"
        'version: 1\ntasks:\n  a:\n    run: "  "\n',
        [":4: tasks.a.run is blank: a command of only spaces runs nothing, and succeeds"],
    ),
    "markdown_fences_around_the_yaml": (  # a chat's answer pasted whole
        "Here is your workflow:\n\n```yaml\nversion: 1\ntasks:\n  a: {run: x}\n```\n",
        [":3: invalid YAML: this line is a Markdown code fence", "keep only the lines between"],
    ),
    "a_fence_inside_a_prompt_is_text": (  # the error is elsewhere; the fence is not blamed
        "version: 1\ntasks:\n  a:\n    prompt: |\n      ```py\n      x\n      ```\n  b: {run: [x\n",
        [":8: invalid YAML", "close the quote or bracket"],
    ),
    "tab_indentation": (
        "version: 1\ntasks:\n\ta:\n\t\trun: x\n",
        [":3: invalid YAML", "YAML indents with spaces only: replace the tab"],
    ),
    "colon_in_a_plain_value": (  # a shell command or prompt holding ': ', as so many do
        'version: 1\ntasks:\n  a:\n    run: echo "note: $ABREAST_FEEDBACK"\n',
        [
            ":4: invalid YAML: mapping values are not allowed",
            "the value of `run` is not plain text to YAML (`: ` in it reads as another key)",
            '      run: |\n        echo "note: $ABREAST_FEEDBACK"\n',
            "or put the whole value in single quotes",
        ],
    ),
    "shell_test_at_the_start_of_a_value": (  # `[` opens a YAML list
        "version: 1\ntasks:\n  a:\n    run: [ -f x ] && echo yes\n",
        [":4: invalid YAML", "the value of `run` is not plain text to YAML (`[` opens a list)"],
    ),
    "a_value_quoted_in_part": (
        'version: 1\ntasks:\n  a:\n    run: "echo" x\n',
        [":4: invalid YAML", "(a quote that starts it must end it)", "      run: |\n"],
    ),
    "backquote_at_the_start_of_a_value": (
        "version: 1\ntasks:\n  a:\n    run: `date` > x\n",
        [":4: invalid YAML", "(a backquote is reserved)"],
    ),
    "a_shell_test_alone_is_a_list": (
        "version: 1\ntasks:\n  a:\n    run: [ -f x ]\n",
        [
            ":4: tasks.a.run: should be text, not a list",
            "YAML reads a value that starts with `[` as a list (a shell test `[ -f x ]` too)",
        ],
    ),
    "commands_as_a_list_as_in_gitlab": (
        "version: 1\nchecks:\n  - run:\n    - make\n    - make test\n"
        "tasks:\n  a:\n    run:\n      - npm ci\n      - npm test\n",
        [
            ":3: checks[0].run: should be text, not a list of commands",
            ":8: tasks.a.run: should be text, not a list of commands",
            "hint: write them as a block, `run: |` and one command a line below it",
        ],
    ),
    "prompt_placeholder_of_other_tools": (  # the agent would be given "{prompt}" to do
        "version: 1\nagents:\n  c: {run: 'claude -p \"{prompt}\"'}\n"
        "  d: {run: 'tool --message \"{{ prompt }}\"'}\n"
        "tasks:\n  a: {agent: c, prompt: hi}\n  b: {agent: d, prompt: hi}\n"
        "  e: {prompt: hi, run: 'tool \"$PROMPT\"'}\n"
        "  f: {prompt: hi, run: 'tool \"$PROMPT\"', env: {PROMPT: mine}}\n",
        [
            ":3: agents.c.run: '{prompt}' is replaced by nothing: the prompt reaches the "
            "command in $ABREAST_PROMPT, never in its text",
            'hint: write "$ABREAST_PROMPT" where {prompt} is (in double quotes)',
            ":4: agents.d.run: '{{ prompt }}' is replaced by nothing",
            ":8: tasks.e.run: '$PROMPT' is no variable abreast sets",
            "(3 problems in",  # f sets PROMPT itself
        ],
    ),
    "duplicate_key": (
        "version: 1\ntasks:\n  a: {run: x}\n  a: {run: y}\n",
        [":4: duplicate key 'a' (first at line 3)"],
    ),
    "unknown_key": (
        "version: 1\ntasks:\n  a:\n    run: x\n    estmate: 5m\n",
        [
            ":5: unknown key 'estmate' in tasks.a; did you mean 'estimate'?",
            "allowed keys: agent, backoff",
        ],
    ),
    "unknown_top_key": (
        "version: 1\nmax_paralel: 3\ntasks:\n" + GOOD_TASK,
        [":2: unknown key 'max_paralel' in the top level; did you mean 'max_parallel'?"],
    ),
    "unknown_dependency": (
        "version: 1\ntasks:\n  a: {run: x, needs: [bb]}\n  b: {run: y}\n",
        [":3: task 'a' needs 'bb', which is not a task; did you mean 'b'?"],
    ),
    "bad_duration": (
        "version: 1\ntasks:\n  a: {run: x, timeout: soon}\n",
        [":3: tasks.a.timeout: 'soon' is not a duration", "1h30m"],
    ),
    "zero_timeout": (  # the value as the file writes it, not as parsed (0.0)
        "version: 1\ndefaults:\n  timeout: 0\ntasks:\n" + GOOD_TASK,
        [":3: defaults.timeout: input should be greater than 0 (got 0)"],
    ),
    "cycle": (
        "version: 1\ntasks:\n  a: {run: x, needs: [c]}\n  b: {run: x, needs: [a]}\n"
        "  c: {run: x, needs: [b]}\n",
        ["dependency cycle: a -> c -> b -> a"],
    ),
    "unknown_pool": (
        "version: 1\npools: {db: 1}\ntasks:\n  a: {run: x, pools: [dbb]}\n",
        [":4: unknown pool 'dbb'; did you mean 'db'?", "declare it under `pools:`"],
    ),
    "unknown_agent": (
        "version: 1\ntasks:\n  a: {agent: claude}\n",
        [":3: unknown agent 'claude'", "declare it under `agents:`"],
    ),
    "unknown_key_pool": (
        "version: 1\nagents: {c: {run: x, keys: anthropic}}\ntasks:\n  a: {agent: c}\n",
        [":2: unknown key pool 'anthropic'"],
    ),
    "unknown_lock": (
        "version: 1\ntasks:\n  a: {run: x, locks: [tests]}\n",
        [":3: unknown lock 'tests'", "declare it under `locks:`"],
    ),
    "check_unknown_lock": (
        "version: 1\nchecks:\n  - {run: make, lock: tst}\ntasks:\n" + GOOD_TASK,
        [":3: unknown lock 'tst'"],
    ),
    "unsafe_tag": (
        "version: 1\ntasks:\n  a: !!python/object/apply:os.system ['true']\n",
        [":3: unsupported YAML tag"],
    ),
    "nothing_to_run": (
        "version: 1\ntasks:\n  a: {prompt: hi}\n",
        ["task 'a' has nothing to run", "`run: COMMAND`"],
    ),
    "no_version": ("tasks:\n" + GOOD_TASK, ["missing `version: 1`"]),
    "wrong_version": ("version: 2\ntasks:\n" + GOOD_TASK, [":1: unsupported version 2"]),
    "no_tasks": ("version: 1\ntasks: {}\n", ["the workflow has no tasks"]),
    "not_a_mapping": ("- a\n- b\n", ["the top level must be a mapping"]),
    "empty_file": ("", ["the file is empty"]),
    "when_unknown_flag": (
        "version: 1\nflags: {fast: true}\ntasks:\n  a: {run: x, when: fsat}\n",
        [":4: when: 'fsat' reads 'fsat', which is not a flag; did you mean 'fast'?"],
    ),
    "when_not_upstream": (
        "version: 1\ntasks:\n  a: {run: x}\n  b: {run: x, when: 'outputs.a.ok'}\n",
        ["reads outputs of 'a', which 'b' does not depend on", "add 'a' to the `needs` of 'b'"],
    ),
    "when_bad_syntax": (
        "version: 1\ntasks:\n  a: {run: x, when: 'a ==='}\n",
        ["is not a valid expression"],
    ),
    "when_calls_function": (
        "version: 1\ntasks:\n  a: {run: x, when: '__import__(\"os\")'}\n",
        ["may only call"],
    ),
    "gate_in_when": (
        "version: 1\ntasks:\n  a: {run: x, when: 'output.x > 1'}\n",
        ["only a gate has"],
    ),
    "when_reads_a_task_it_waits_for_only_a_signal_of": (
        "version: 1\ntasks:\n  a: {run: x, signals: [up]}\n"
        "  b: {run: x, needs: ['a:up'], when: 'outputs.a.ok'}\n",
        [
            ":4: when: 'outputs.a.ok' reads outputs of 'a', which 'b' waits for only a signal"
            " of: 'a' writes its output when it ends, and 'b' starts before that",
            "add 'a' itself to the `needs` of 'b'",
        ],
    ),
    "prompt_unknown_name": (  # GitHub's ${{ secrets.X }} in a prompt about a workflow
        "version: 1\ntasks:\n  a:\n    run: x\n    prompt: 'use ${{ secrets.TOKEN }}'\n",
        [
            ":5: prompt: '${{ secrets.TOKEN }}' reads 'secrets', which is not a flag",
            "to keep the characters `${{` in a prompt, write `$${{`",
        ],
    ),
    "prompt_not_upstream": (
        "version: 1\ntasks:\n  a: {run: x}\n  b: {run: x, prompt: 'fix ${{ outputs.a.bug }}'}\n",
        [
            ":4: prompt: '${{ outputs.a.bug }}' reads outputs of 'a', which 'b' does not depend on",
        ],
    ),
    "prompt_signal_only": (
        "version: 1\ntasks:\n  a: {run: x, signals: [up]}\n"
        "  b: {run: x, needs: ['a:up'], prompt: '${{ outputs.a.url }}'}\n",
        ["reads outputs of 'a', which 'b' waits for only a signal of"],
    ),
    "env_place_not_upstream": (
        "version: 1\ntasks:\n  a: {run: x}\n"
        "  b:\n    run: x\n    env: {TAG: '${{ outputs.a.tag }}'}\n",
        [":6: env.TAG: '${{ outputs.a.tag }}' reads outputs of 'a', which 'b' does not depend on"],
    ),
    "env_place_from_defaults_reads_itself": (
        "version: 1\ndefaults:\n  env: {TAG: '${{ outputs.build.tag }}'}\n"
        "tasks:\n  build: {run: x}\n  deploy: {run: x, needs: [build]}\n",
        [
            ":5: env.TAG: '${{ outputs.build.tag }}' reads the outputs of 'build' itself, "
            "which are not there before it ends (the value is from `defaults.env`",
            "read them in a task that needs it, in that task's own `env`",
        ],
    ),
    "place_in_a_command": (  # as GitHub Actions has it; the shell said "Bad substitution"
        "version: 1\nflags: {tag: v1}\ntasks:\n  build: {run: x}\n"
        "  deploy: {run: './deploy.sh ${{ outputs.build.tag }}', needs: [build]}\n"
        "  gh: {run: 'echo \"${{ github.ref }} $${{ tag }}\" > ci.yml'}\n",
        [
            ":5: tasks.deploy.run: '${{ outputs.build.tag }}': abreast fills in no `${{ }}` "
            "place in a command (an output would run as shell code)",
            'put it in the task\'s env (`env: {VALUE: "${{ outputs.build.tag }}"}`) and write '
            '"$VALUE" in the command',
        ],
    ),
    "agent_env_place": (
        "version: 1\nagents:\n  c:\n    run: x\n    env: {TAG: 'v${{ outputs.a.tag }}'}\n"
        "tasks:\n  a: {agent: c}\n",
        [
            ":5: agents.c.env.TAG: a `${{ }}` place is filled in from the outputs a task reads, "
            "so it belongs in a task's env, not an agent's",
            "move the variable to the `env` of the tasks (or `defaults.env`)",
        ],
    ),
    "prompt_unclosed": (
        "version: 1\ntasks:\n  a: {run: x, prompt: 'see ${{ flags.x and $${{ y'}\n",
        [":3: prompt has `${{` with no `}}` after it: '${{ flags.x and $${{ y'"],
    ),
    "prompt_bad_expression": (
        "version: 1\ntasks:\n  a: {run: x, prompt: 'a ${{ x === 1 }} b ${{ }}'}\n",
        [":3: prompt '${{ x === 1 }}' is not a valid expression"],
    ),
    "prompt_calls": (
        "version: 1\ntasks:\n  a: {run: x, prompt: '${{ open(\"/etc/passwd\") }}'}\n",
        [":3: prompt '${{ open(\"/etc/passwd\") }}' may only call"],
    ),
    "signal_not_declared": (
        "version: 1\ntasks:\n  a: {run: x}\n  b: {run: x, needs: ['a:ready']}\n",
        ["waits for signal 'ready' of 'a', which 'a' does not declare"],
    ),
    "owns_unclosed_bracket": (  # git's rule: it matches nothing (`[]]` is a set of ']')
        "version: 1\ntasks:\n  a: {run: x, owns: ['src/[]]/**', 'src/[a-']}\n",
        ["owns pattern 'src/[a-' has a '[' that is never closed, so it matches nothing"],
    ),
    "owns_escapes": (
        "version: 1\ntasks:\n  a: {run: x, owns: ['../etc/**']}\n",
        ["owns pattern '../etc/**' leaves the repository"],
    ),
    "reserved_env": (
        "version: 1\ntasks:\n  a: {run: x, env: {ABREAST_TASK_ID: x}}\n",
        ["'ABREAST_TASK_ID' is reserved"],
    ),
    "bad_rate": (
        "version: 1\nkeys: {k: {from: [K], limit: lots}}\ntasks:\n" + GOOD_TASK,
        [":2: keys.k.limit: 'lots' is not a rate"],
    ),
    "worktrees_path_escapes": (
        "version: 1\nworktrees: {copy: [.env, ../secrets], keep: [.git/x]}\ntasks:\n" + GOOD_TASK,
        [
            ":2: worktrees.copy[1]: must be a path relative to the repository root",
            ":2: worktrees.keep[0]: must be a path relative to the repository root",
        ],
    ),
    "agent_undeclared": (
        "version: 1\ntasks:\n  a: {agent: claude, prompt: hi}\n",
        [
            ":3: unknown agent 'claude'",
            'agents:\n      claude:\n        run: claude -p "$ABREAST_PROMPT"',
            "no built-in agents",
        ],
    ),
    "nul_in_what_reaches_a_process": (  # a traceback from posix_spawn, mid-run, before
        'version: 1\nagents: {x: {run: "a\\0b"}}\ntasks:\n'
        '  a: {run: "echo \\0", env: {V: "\\0"}}\n  b: {agent: x, prompt: "p\\0"}\n',
        [
            ":2: agents.x.run: contains a NUL character (\\0)",
            ":4: tasks.a.run: contains a NUL character",
            ":4: tasks.a.env.V: contains a NUL character",
            ":5: tasks.b.prompt: contains a NUL character",
        ],
    ),
    "too_long_for_a_process": (  # "could not start: Argument list too long", at run time
        "version: 1\ntasks:\n"
        f"  a: {{run: {'x' * 140_000}, env: {{V: {'v' * 140_000}}}}}\n"
        f"  b: {{run: x, prompt: {'p' * 120_000}}}\n",
        [
            ":3: tasks.a.run: 140,000 bytes is more than a command line may hold (127 KiB)",
            ":3: tasks.a.env.V: 140,000 bytes is more than an environment variable may hold",
            ":4: tasks.b.prompt: 120,000 bytes is more than a prompt may hold (112 KiB)",
        ],
    ),
    "numbers_out_of_range": (  # NaN reached the analysis's formatting: a traceback
        "version: 1\nmemory: {growth_limit: " + "9" * 400 + "GB}\n"
        "keys: {k: {from: [K], limit: 1/0.00001s}}\ntasks:\n"
        "  a: {run: x, estimate: .nan, timeout: 99999999d}\n"
        "  b: {run: x, backoff: {factor: .inf, initial: nan}}\n",
        [
            ":2: memory.growth_limit: '999",
            "is more than 1EiB, the largest size abreast takes",
            ":3: keys.k.limit: '1/0.00001s': the window must be from 1ms to 3650d",
            ":5: tasks.a.estimate: nan is not a duration",
            ":5: tasks.a.timeout: '99999999d' is longer than 3650d",
            ":6: tasks.b.backoff.factor: input should be a finite number (got inf)",
            ":6: tasks.b.backoff.initial: 'nan' is not a duration",
        ],
    ),
    "bad_literal": (
        "version: 1\nisolation: docker\ntasks:\n" + GOOD_TASK,
        [":2: isolation: input should be 'worktree' or 'none' (got 'docker')"],
    ),
    # A command its shell cannot parse failed every attempt with exit 2 once the run had
    # started (its siblings ran, its dependents were blocked): found before anything runs.
    "unclosed_quote_in_a_command": (  # YAML takes it as text; the shell would not
        'version: 1\ntasks:\n  a:\n    run: echo "done\n',
        [
            ":4: tasks.a.run: /bin/sh cannot parse it (line 1: ",
            "Unterminated quoted string): 'echo \"done'",
            "hint: fix its quoting or structure; `sh -n -c 'COMMAND'`",
        ],
    ),
    "if_without_fi_in_a_check": (
        "version: 1\nchecks:\n  - run: |\n      if [ -f x ]; then\n        make test\n"
        "tasks:\n" + GOOD_TASK,
        [":3: checks[0].run: /bin/sh cannot parse it (line ", '(expecting "fi")'],
    ),
    "an_agents_command_once_for_its_tasks": (
        "version: 1\nagents:\n  bot: {run: 'bot -p \"$ABREAST_PROMPT'}\ntasks:\n"
        "  a: {agent: bot, prompt: x}\n  b: {agent: bot, prompt: y}\n",
        [":3: agents.bot.run: /bin/sh cannot parse it"],
    ),
    "given_to_bash": (
        "version: 1\ndefaults: {shell: bash}\ntasks:\n  a: {run: 'echo $((1 + )'}\n",
        [":4: tasks.a.run: bash cannot parse it (line 1: "],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_workflow_gets_one_clear_message(case: str, write, cli) -> None:  # type: ignore[no-untyped-def]
    text, expected = CASES[case]
    path = write(text)
    result = cli("analyze", str(path))
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith(f"abreast: error: {path}")
    for fragment in expected:
        assert fragment in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    "bad_id", ["../x", "-f", "a..b", "has space", "x" * 100, "Upper", "a/b", ""]
)
def test_bad_task_ids_are_rejected_with_the_rule(bad_id: str, write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write(f'version: 1\ntasks:\n  "{bad_id}": {{run: x}}\n')
    result = cli("analyze", str(path))
    assert result.code == 2
    assert f"task id {bad_id!r} is not allowed" in result.err
    assert "1-63 characters of a-z, 0-9" in result.err
    assert ":3:" in result.err


def test_all_problems_are_reported_together(write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write("version: 1\ntasks:\n  a: {run: x, estmate: 5m}\n  b: {run: y, timeout: soon}\n")
    result = cli("analyze", str(path))
    assert ":3: unknown key 'estmate'" in result.err
    assert ":4: tasks.b.timeout" in result.err
    assert "(2 problems in" in result.err


def test_a_cycle_is_reported_beside_an_unknown_dependency(write, cli) -> None:  # type: ignore[no-untyped-def]
    # The unknown dependency hid the cycle until it was fixed.
    path = write(
        "version: 1\ntasks:\n  a: {run: x, needs: [b]}\n  b: {run: x, needs: [a]}\n"
        "  c: {run: x, needs: [nope]}\n"
    )
    result = cli("validate", str(path))
    assert result.code == 2
    assert ":3: dependency cycle: a -> b -> a" in result.err
    assert ":5: task 'c' needs 'nope', which is not a task" in result.err
    assert "(2 problems in" in result.err


def test_send_back_names_a_task_it_needs_with_nothing_between(write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write(
        "version: 1\ntasks:\n  impl: {run: x}\n  mid: {run: x, needs: [impl]}\n"
        "  review:\n    run: x\n    needs: [mid, impl]\n"
        "    send_back: {to: impl, when: not output.ok}\n"
        "  other:\n    run: x\n    needs: [mid]\n"
        "    send_back: {to: implx, when: not output.ok}\n"
        "  third:\n    run: x\n    needs: [mid]\n"
        "    send_back: {to: impl, when: not output.ok}\n"
    )
    result = cli("validate", str(path))
    assert result.code == 2
    assert (
        ":8: send_back.to: mid needs 'impl' and 'review' needs it: they would have run on "
        "the work 'review' sends back" in result.err
    )
    assert ":12: send_back.to: 'implx' is not a task; did you mean 'impl'?" in result.err
    assert ":16: send_back.to: 'impl', which 'third' does not need" in result.err


def test_send_back_conditions_are_checked_as_a_gate_is(write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write(
        "version: 1\ntasks:\n  impl: {run: x}\n  review:\n    run: x\n    needs: [impl]\n"
        "    send_back: {to: impl, when: output.ok ==, feedback: outputs.review.notes}\n"
    )
    result = cli("validate", str(path))
    assert result.code == 2
    assert ":7: send_back.when: 'output.ok ==' is not a valid expression" in result.err
    assert ":7: send_back.feedback: 'outputs.review.notes' reads the outputs of 'review'" in (
        result.err
    )


def test_tasks_that_need_the_reviewed_task_wait_for_its_review_too(write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write(
        "version: 1\ntasks:\n  impl: {run: x}\n  docs: {run: x, needs: [impl]}\n"
        "  review:\n    run: x\n    needs: [impl]\n    send_back: {to: impl, when: 'true'}\n"
    )
    result = cli("analyze", str(path), "--format", "json")
    assert result.code == 0, result.err
    waves = {t["id"]: t["wave"] for t in json.loads(result.out)["tasks"]}
    assert waves == {"impl": 0, "review": 1, "docs": 2}


def test_defaults_errors_point_at_defaults(write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write("version: 1\ndefaults:\n  timeout: soon\ntasks:\n" + GOOD_TASK)
    result = cli("analyze", str(path))
    assert ":3: defaults.timeout: 'soon' is not a duration" in result.err


def test_duplicate_key_in_json_is_found_with_its_line(write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write('{"version": 1,\n "tasks": {"a": {"run": "x"},\n  "a": {"run": "y"}}}', "w.json")
    result = cli("analyze", str(path))
    assert ":3: duplicate key 'a' (first at line 2)" in result.err


def test_bad_json_says_where(write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write('{"version": 1,\n "tasks": {,}}', "w.json")
    result = cli("analyze", str(path))
    assert result.code == 2
    assert "w.json:2: invalid JSON" in result.err


def test_a_json_file_nested_too_deep_is_refused_not_a_traceback(write, cli) -> None:  # type: ignore[no-untyped-def]
    deep = "[" * 50_000 + "]" * 50_000  # RecursionError in the JSON parser
    path = write('{"version": 1, "flags": {"x": ' + deep + '}, "tasks": {}}', "w.json")
    result = cli("validate", str(path))
    assert result.code == 2
    assert result.err == f"abreast: error: {path}: the document nests over 64 levels deep\n"


def test_a_long_condition_is_not_repeated_whole_in_its_error(write, cli) -> None:  # type: ignore[no-untyped-def]
    condition = "(" * 3000 + "x" + ")" * 3000
    path = write(f'version: 1\ntasks:\n  a: {{run: "true", when: "{condition}"}}\n')
    result = cli("validate", str(path))
    assert result.code == 2
    assert "is not a valid expression: too many nested parentheses" in result.err
    assert len(result.err) < 400, result.err


def test_missing_file_and_directory(tmp_path, cli) -> None:  # type: ignore[no-untyped-def]
    assert "no such file" in cli("analyze", str(tmp_path / "nope.yaml")).err
    assert "is a directory" in cli("analyze", str(tmp_path)).err


def test_without_a_file_the_nearest_abreast_yaml_up_to_the_repository_top_is_read(
    tmp_path: Path,
) -> None:
    # Typed in src/ of a project, `abreast run` looked for ./abreast.yaml only.
    outer = tmp_path / "outer"
    repo = outer / "repo"
    deep = repo / "src" / "pkg"
    deep.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    # Above the repository: never read (another project's, or none of this one's).
    (outer / "abreast.yaml").write_text("version: 1\ntasks:\n  outside: {run: 'true'}\n")
    missing = run_abreast("validate", cwd=deep)
    assert missing.code == 2
    assert missing.err.startswith(
        f"abreast: error: abreast.yaml: no such file in {deep} nor above it up to the "
        f"repository's top, {repo}\n"
    )
    (repo / "abreast.yaml").write_text("version: 1\ntasks:\n  a: {run: 'true'}\n")
    for command in ("validate", "analyze"):
        found = run_abreast(command, cwd=deep)
        assert found.code == 0, found.err
        assert found.err == "note: using ../../abreast.yaml (none in this directory)\n"
    assert run_abreast("validate", cwd=deep).out == "../../abreast.yaml: ok (1 task)\n"
    ran = run_abreast("run", "--plain", "--no-monitor", "--dry-run", cwd=deep)
    assert ran.code == 0 and "1. a " in ran.out, ran.out + ran.err
    # abreast.yml is read too; beside abreast.yaml it is said not to be.
    (deep / "abreast.yml").write_text("version: 1\ntasks:\n  b: {run: 'true'}\n")
    assert run_abreast("validate", cwd=deep).out == "abreast.yml: ok (1 task)\n"
    (deep / "abreast.yaml").write_text("version: 1\ntasks:\n  c: {run: 'true'}\n")
    both = run_abreast("validate", cwd=deep)
    assert (both.out, both.err) == (
        "abreast.yaml: ok (1 task)\n",
        "note: using abreast.yaml; abreast.yml is not read\n",
    )
    # Outside any repository only the current directory counts.
    lone = tmp_path / "lone" / "sub"
    lone.mkdir(parents=True)
    (lone.parent / "abreast.yaml").write_text("version: 1\ntasks:\n  a: {run: 'true'}\n")
    assert f"no such file in {lone}\n" in run_abreast("validate", cwd=lone).err


@pytest.mark.parametrize(
    ("encoding", "said"),
    [
        ("utf-16", ": is UTF-16 text, not UTF-8 (as Windows PowerShell's `>`"),
        ("utf-16-le", ": is UTF-16 text, not UTF-8"),  # no byte-order mark: reads as UTF-8
        ("cp1252", ":3: is not UTF-8 text: byte 0xe9 on this line"),
    ],
)
def test_a_file_not_saved_as_utf8_says_in_what_it_was_saved(  # type: ignore[no-untyped-def]
    encoding: str, said: str, tmp_path, cli
) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes("version: 1\ntasks:\n  a: {run: echo café}\n".encode(encoding))
    result = cli("validate", str(path))
    assert result.code == 2
    assert f"{path}{said}" in result.err
    assert "iconv" in result.err and "<unicode string>" not in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyse"], "did you mean 'analyze'?"),
        (["analyze", "--format", "yaml"], "invalid choice: 'yaml'"),
        (["analyze", "--max-parallel", "0"], "--max-parallel 0: must be at least 1"),
        (["analyze", "--flag", "fsat"], "'fsat' is not a flag of"),
        (["analyze", "--flag", "fast=maybe"], "'fast' is true/false, not 'maybe'"),
        (["analyze", "--flag", "level=high"], "'level' is a number (default 1), not 'high'"),
        (["analyze", "--max-parallel", "x"], "invalid int value: 'x'"),
        (["analyze", "--max-parallel", "9" * 20], "must be at most 10000"),
        (["run", "--dry-run", "--run-id", "../x"], "--run-id '../x' is not allowed"),
    ],
)
def test_bad_command_line_gets_clear_message(args: list[str], message: str, write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write("version: 1\nflags: {fast: true, level: 1}\ntasks:\n" + GOOD_TASK)
    result = cli(*args[:1], *([str(path)] if len(args) > 1 else []), *args[1:])
    assert result.code == 2
    assert message in result.err


def test_a_real_process_exits_2_without_traceback(write) -> None:  # type: ignore[no-untyped-def]
    path = write("version: 1\ntasks:\n  a: {run: x, needs: [a]}\n")
    result = run_abreast("analyze", str(path))
    assert result.code == 2
    assert "task 'a' needs itself" in result.err
    assert "Traceback" not in result.err


def test_bad_defaults_do_not_hide_problems_in_tasks(write, cli) -> None:  # type: ignore[no-untyped-def]
    path = write(
        "version: 1\ndefaults:\n  timeout: 0\n  retris: 2\n  retries: 1\n"
        "tasks:\n  a: {run: x, estmate: 5m}\n  b: {run: y}\n  c: {run: z, max_iterations: 0}\n"
    )
    result = cli("validate", str(path))
    assert result.code == 2
    assert ":3: defaults.timeout: input should be greater than 0 (got 0)" in result.err
    assert ":4: unknown key 'retris' in defaults; did you mean 'retries'?" in result.err
    assert ":7: unknown key 'estmate' in tasks.a" in result.err
    assert ":9: tasks.c.max_iterations: input should be greater than or equal to 1" in result.err
    # Each problem in defaults once, not once per task that inherits it.
    assert result.err.count("defaults.timeout") == 1
    assert "(4 problems in" in result.err


def test_help_lists_every_command_and_each_command_parses_alone(capsys) -> None:  # type: ignore[no-untyped-def]
    from abreast.cli import _COMMAND_ARGS, build_parser, main

    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    for name, (help_line, _) in _COMMAND_ARGS.items():
        assert f"    {name}" in listing and help_line in listing
        # Built alone (as `abreast NAME ...` builds it), a command parses as in the whole.
        alone = build_parser(name)._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        assert list(alone) == [name]
        whole = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        assert alone[name].format_help() == whole[name].format_help()
    with pytest.raises(SystemExit):
        main(["lock", "--help"])
    assert "usage: abreast lock NAME [--ttl D]" in capsys.readouterr().out


def test_init_writes_a_file_that_validates_with_its_examples_uncommented(  # type: ignore[no-untyped-def]
    tmp_path, cli, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("init").code == 0
    again = cli("init")
    assert again.code == 2 and "already exists" in again.err
    for bad, reason in (("nodir/abreast.yaml", "No such file"), (".", "Is a directory")):
        refused = cli("init", bad, "--force")
        assert refused.code == 2 and f"cannot write {bad}: {reason}" in refused.err, refused.err
    path = tmp_path / "abreast.yaml"
    assert cli("validate", str(path)).code == 0
    text = path.read_text()
    assert "# worktrees:" in text
    every = tmp_path / "every.yaml"
    every.write_text("".join(line.removeprefix("# ") + "\n" for line in text.splitlines()))
    result = cli("validate", str(every))
    assert result.code == 0, result.err


@pytest.mark.parametrize(
    ("files", "command"),
    [
        ({"Makefile": "all:\n\ttrue\ntest: all\n\tpytest\n", "go.mod": "module x\n"}, "make test"),
        (
            {"package.json": '{"scripts": {"test": "vitest run"}}', "pnpm-lock.yaml": ""},
            "pnpm test",
        ),
        ({"package.json": '{"scripts": {"test": "echo \\"Error: no test specified\\""}}'}, None),
        ({"Cargo.toml": "[package]\n"}, "cargo test"),
        ({"go.mod": "module x\n"}, "go test ./..."),
        ({"pyproject.toml": "[tool.pytest.ini_options]\n"}, "python -m pytest -q"),
        ({"setup.cfg": "[metadata]\n", "tests/test_x.py": ""}, "python -m pytest -q"),
        ({"README.md": "# x\n"}, None),
    ],
)
def test_init_fills_in_the_projects_own_test_command_as_the_check(  # type: ignore[no-untyped-def]
    tmp_path, cli, monkeypatch, files: dict[str, str], command: str | None
) -> None:
    # `abreast init` always suggested `make test` as the merge check, whatever the project
    # ran its tests with.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "ci").mkdir()
    monkeypatch.chdir(tmp_path / "ci")  # the repository's root is where commands run
    made = cli("init")
    assert made.code == 0, made.err
    text = (tmp_path / "ci" / "abreast.yaml").read_text()
    if command is None:
        assert "#   - run: make test\n" in text and "found the project's tests" not in made.out
        return
    (line,) = [x for x in text.splitlines() if x.startswith(f"#   - run: {command} ")]
    # Its comment in the column of the others (`# checks:  ...  # run on the merge ...`).
    (head,) = [x for x in text.splitlines() if x.startswith("# checks:")]
    at = max(head.index(" # run on the merge"), len(f"#   - run: {command}"))  # or after it
    assert line.index(" # found in ") == at, (line, head)
    assert f"found the project's tests: `{command}`" in made.out
    checks = text.replace("# checks:", "checks:").replace(
        f"#   - run: {command}", f"  - run: {command}"
    )
    (tmp_path / "ci" / "abreast.yaml").write_text(checks)
    assert cli("validate", "abreast.yaml").code == 0


def test_init_says_python3_where_there_is_no_python(tmp_path, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Debian and Ubuntu have no `python` without python-is-python3: the suggested check
    # failed with "python: not found" on every merge once uncommented.
    import shutil
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    git_path = shutil.which("git")
    assert git_path is not None
    (bin_dir / "git").symlink_to(git_path)
    monkeypatch.setenv("PATH", str(bin_dir))
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    monkeypatch.chdir(tmp_path)
    made = cli("init")
    assert made.code == 0, made.err
    assert "found the project's tests: `python3 -m pytest -q`" in made.out


def test_the_event_table_names_every_event_type_abreast_emits() -> None:
    import ast
    import re

    from tests.conftest import ROOT

    emitted = set()
    for path in (ROOT / "src" / "abreast").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "stage_event":
                emitted |= {
                    part
                    for arg in node.args[:3]
                    for leaf in ast.walk(arg)
                    if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str)
                    for part in [leaf.value]
                    if re.fullmatch(r"[a-z]+\.[a-z_]+", part)
                }
    doc = (ROOT / "docs" / "workflow-file.md").read_text()
    documented = set(re.findall(r"^\| `([a-z]+\.[a-z_]+)` \|", doc, re.MULTILINE))
    assert len(emitted) > 30  # the scan finds them
    assert emitted - documented == set(), "emitted, not in the table"
    assert documented - emitted == set(), "in the table, never emitted"


def test_commands_their_shell_parses_are_not_refused(write, cli) -> None:  # type: ignore[no-untyped-def]
    # Structures, substitutions, here-documents, bash's extended globs under `shell: bash`
    # (set before the command is read, as abreast's `eval` would see them).
    path = write(
        "version: 1\ntasks:\n"
        '  a: {run: \'for f in *.txt; do wc -l "$f"; done && echo "$(date)" # ok\'}\n'
        "  b:\n    run: |\n      cat > x <<EOF\n      it's\n      EOF\n"
        "  c: {run: 'shopt -s nullglob; ls !(x)', shell: bash}\n"
        "  d: {run: '[ -f x ] || { echo no; exit 1; }'}\n"
    )
    result = cli("validate", str(path))
    assert result.code == 0, result.err


def test_a_command_refused_for_its_syntax_leaves_no_run_behind(write, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write("version: 1\ntasks:\n  a: {run: 'echo \"x'}\n  b: {run: 'true'}\n")
    result = run_abreast("run", str(path), "--plain", cwd=path.parent)
    assert result.code == 2 and "tasks.a.run: /bin/sh cannot parse it" in result.err
    assert result.out == "" and not (path.parent / ".abreast").exists()


def test_what_surely_parses_is_what_the_shells_parse() -> None:
    # Commands of plain words joined by operators are not given to a shell to check (a
    # fork each: a workflow of 5000 generated commands would wait seconds); what is taken
    # so must parse in both shells. Random commands of the tokens that matter.
    import random
    import shutil

    from abreast.spec.commands import parse_errors, surely_parses

    assert surely_parses('claude -p "$ABREAST_PROMPT" > out.log 2>&1 && echo ${HOME}/x | tee a')
    for unsure in ('echo "a', "a &&", "&& a", "a ; ; b", "a >", "echo $(date)", "if x", "b[1]"):
        assert not surely_parses(unsure), unsure
    tokens = [*"ab |;&<>*[]!=-'\"\\", "&&", "||", "2>&1", ">&", ">>", "<>", ">|", "$A", "${A}"]
    tokens += ['"$A"', "'x'", "if", "echo", "x=1", "\t", ";;", "|&", "&>", "[ ", " ]", "$1"]
    rng = random.Random(7)
    sure = []
    while len(sure) < 300:
        command = "".join(rng.choice(tokens) for _ in range(rng.randint(1, 8)))
        if surely_parses(command):
            sure.append(command)
    assert parse_errors(["echo ok", 'echo "a'], "/bin/sh") == {
        1: "line 1: Syntax error: Unterminated quoted string"
    }
    assert parse_errors(sure, "/bin/sh") == {}
    bash = shutil.which("bash")
    assert bash is None or parse_errors(sure, bash, ("-O", "extglob")) == {}
