"""The workflow file's data model (version 1), as plain frozen dataclasses.

Each field's type says what the file may hold, and its constraints ride along as
`Annotated` metadata from this module (`Ge`, `Pattern`, `Parse`, ...). `schema.py`
turns these classes into a pydantic-core validator, which checks shapes and values
and builds the instances, and into the JSON Schema for editors. References between
sections, ids and conditions are checked in `validate.py`, which also merges
`defaults` into each task. Every class is frozen: a loaded workflow never changes.

Nothing here imports pydantic: `abreast run` starts without pydantic's model machinery
(about 90 ms of imports and validator building, against about 20 ms for pydantic-core).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from abreast.spec.durations import parse_duration, parse_rate, parse_size

TASK_ID_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
# TASK_ID_PATTERN in words (task ids, the workflow's name, run ids)
ID_RULE = "1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}"
FLAG_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
ENV_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
MAX_PARALLEL = 10_000  # the most tasks at once: max_parallel, --max-parallel


# -- constraints, read by schema.py --------------------------------------------------------


@dataclass(frozen=True)
class _Number:
    value: float


class Ge(_Number):
    """At least this number."""


class Gt(_Number):
    """More than this number."""


class Le(_Number):
    """At most this number."""


@dataclass(frozen=True)
class MinLen:
    """At least this many characters, items or entries."""

    value: int


@dataclass(frozen=True)
class _Text:
    text: str


class Pattern(_Text):
    """Text matching this regular expression (`text`; searched, so anchor it)."""


class Key(_Text):
    """The key the file writes this field under (`text`), where it is not the field's
    name."""


class Doc(_Text):
    """A description for the JSON Schema."""


@dataclass(frozen=True)
class Parse:
    """Turn the raw value into the field's type first (ValueError: the reason it cannot);
    `json` is what the file may hold, for the JSON Schema."""

    fn: Callable[[Any], Any]
    json: dict[str, Any] = field(compare=False)  # out of the hash: typing hashes metadata


@dataclass(frozen=True)
class After:
    """Check the value once it has its type (ValueError: what is wrong)."""

    fn: Callable[[Any], Any]


Duration = Annotated[
    float,
    Parse(
        parse_duration,
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*((\d+(\.\d+)?(ms|s|m|h|d))+|\d+(\.\d+)?)\s*$"},
            ],
            "description": "seconds, or a duration like 90s, 45m, 2h, 1h30m",
        },
    ),
]
Rate = Annotated[
    tuple[int, float],
    Parse(
        parse_rate,
        {
            "type": "string",
            "pattern": r"^\s*\d+\s*/\s*\d*\.?\d*\s*[a-z]+\s*$",
            "description": "requests per window, like 100/min, 10/s, 50/10s",
        },
    ),
]
Size = Annotated[
    int,
    Parse(
        parse_size,
        {
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
            "description": "bytes, or a size like 100MB, 2GiB",
        },
    ),
]


def _condition_value(v: object) -> object:
    # `when: false` (YAML's boolean) to turn a task off for a while: the expression `false`.
    return ("true" if v else "false") if isinstance(v, bool) else v


Condition = Annotated[str, Parse(_condition_value, {"type": ["string", "boolean"]}), MinLen(1)]


def _env_value(v: object) -> object:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return str(v)
    return v


# Linux caps each string of a new process's arguments and environment at 128 KiB
# (MAX_ARG_STRLEN): a longer command line or variable makes the start fail (E2BIG).
ARG_STRING_MAX = 128 * 1024
# $ABREAST_PROMPT is the prompt and, after a send-back, the feedback (at most
# FEEDBACK_MAX_CHARS characters, 4 bytes each at most in UTF-8) with a line around it.
FEEDBACK_MAX_CHARS = 4000
PROMPT_MAX = 112 * 1024


def _no_nul(v: str) -> str:
    if "\0" in v:
        raise ValueError(
            "contains a NUL character (\\0), which no command, argument or environment "
            "variable can hold"
        )
    return v


def _fits(limit: int, what: str, fix: str, why: str = "") -> Callable[[str], str]:
    def check(v: str) -> str:
        _no_nul(v)
        if len(v) * 4 > limit and (n := len(v.encode())) > limit:  # encoded only if it may
            raise ValueError(f"{n:,} bytes is more than {what} ({limit // 1024} KiB){why}; {fix}")
        return v

    return check


# Text that reaches a process: its command line, its environment or git's arguments.
Command = Annotated[
    str,
    MinLen(1),
    After(_fits(ARG_STRING_MAX - 1, "a command line may hold", "put it in a script and run that")),
]
PromptText = Annotated[
    str,
    After(
        _fits(
            PROMPT_MAX,
            "a prompt may hold",
            "put the long part in a file of the repository and have the prompt name it",
            ": it reaches the agent in ABREAST_PROMPT, an environment variable, which Linux "
            "caps at 128 KiB (16 KiB of it kept for feedback)",
        )
    ),
]
ENV_VALUE_MAX = ARG_STRING_MAX - 256  # room for the variable's name
EnvValue = Annotated[
    str,
    Parse(_env_value, {"type": ["string", "number", "boolean"]}),
    After(
        _fits(
            ENV_VALUE_MAX,
            "an environment variable may hold",
            "put it in a file and pass the file's path",
        )
    ),
]
Scalar = bool | int | float | str
EnvName = Annotated[str, Pattern(f"^{ENV_PATTERN}$")]


def _increasing(v: tuple[float, float, float]) -> tuple[float, float, float]:
    if not (0 < v[0] < v[1] < v[2] <= 100):
        raise ValueError("thresholds must be three increasing percentages in (0, 100]")
    return v


# -- the workflow ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SendBack:
    """A reviewing task's way of sending the work of a task it needs back to be done
    again, with what to change, then reviewing again."""

    to: Annotated[str, Doc("the task whose work this one reviews: one it needs")]
    when: Annotated[
        Condition,
        Doc("a condition over this task's own output: true sends `to` back"),
    ]
    feedback: Annotated[
        Condition | None,
        Doc("an expression over this task's output: what `to` is told; default: the output"),
    ] = None
    max_rounds: Annotated[
        int,
        Ge(1),
        Le(100),
        Doc("how many times it may send `to` back; this task fails if it still would after"),
    ] = 3


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: initial, then times factor, capped at max, with jitter."""

    initial: Duration = 1.0
    factor: Annotated[float, Ge(1.0)] = 2.0
    max: Duration = 8.0

    def delay_s(self, retry: int) -> float:
        """The nominal wait before retry number `retry` (1-based), before jitter."""
        try:
            return float(min(self.max, self.initial * self.factor ** (retry - 1)))
        except OverflowError:  # a large factor to a high power: past any `max`
            return float(self.max)


# The shells a command may be given to (executor/wrapper.py `SHELLS`).
Shell = Literal["sh", "bash"]


@dataclass(frozen=True)
class Agent:
    """A reusable command profile for coding agents."""

    run: Annotated[Command, Doc("shell command; the prompt arrives in $ABREAST_PROMPT")]
    shell: Annotated[
        Shell | None,
        Doc("the shell `run` is given to, for its tasks; default: the task's (`defaults.shell`)"),
    ] = None
    keys: Annotated[str | None, Doc("key pool this agent draws from")] = None
    max_instances: Annotated[int | None, Ge(1), Doc("1 makes the agent a singleton")] = None
    env: dict[str, EnvValue] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyPool:
    """API keys read from environment variables, each kept under `limit`."""

    from_: Annotated[
        list[EnvName], Key("from"), MinLen(1), Doc("environment variables holding the real keys")
    ]
    limit: Annotated[Rate | None, Doc("per key, e.g. 100/min")] = None
    env: Annotated[
        str | None,
        Pattern(f"^{ENV_PATTERN}$"),
        Doc("variable the task receives its key (or proxy token) in"),
    ] = None
    upstream: Annotated[
        str | None, Pattern(r"^https?://"), Doc("provider base URL; turns on proxy mode")
    ] = None
    style: Annotated[
        Literal["anthropic", "openai", "gemini"],
        Doc("the provider's API: its base-URL variable, key variable and auth header"),
    ] = "anthropic"
    max_concurrent_per_key: Annotated[int | None, Ge(1)] = None
    backoff: Backoff = Backoff()
    max_retries: Annotated[int, Ge(0), Doc("backoff rounds when every key is limited")] = 4

    @property
    def key_env(self) -> str:
        """The variable a task receives its key or token in."""
        if self.env:
            return self.env
        return {"anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}.get(
            self.style, "OPENAI_API_KEY"
        )


@dataclass(frozen=True)
class LockSpec:
    ttl: Annotated[Duration, Gt(0), Doc("a dead holder loses the lock after this")] = 900.0


@dataclass(frozen=True)
class Check:
    """A command run on the merge result before a task's work lands."""

    run: Command
    name: str | None = None
    shell: Annotated[
        Shell | None, Doc("the shell `run` is given to; default: `defaults.shell`")
    ] = None
    lock: str | None = None
    timeout: Duration | None = None
    orphan_after: Annotated[
        Duration | None,
        Gt(0),
        Doc(
            "how long a run of it may show no sign of life before it is taken for hung, "
            "ended and counted red; default: heartbeat.orphan_after"
        ),
    ] = None
    retries: Annotated[
        int,
        Ge(0),
        Le(10),
        Doc(
            "a red run is run again up to this many times before the merge counts as red "
            "(a flaky test suite), instead of sending the task back; a later green is said"
        ),
    ] = 0


@dataclass(frozen=True)
class Events:
    nats: Annotated[str | None, Pattern(r"^(nats|tls)://")] = None
    subject: Annotated[str, MinLen(1)] = "abreast.events"


@dataclass(frozen=True)
class Resources:
    """The adaptive cap: CPU or memory use (percent) at or above each threshold lowers it."""

    monitor: bool = True
    thresholds: Annotated[tuple[float, float, float], After(_increasing)] = (50.0, 70.0, 80.0)


@dataclass(frozen=True)
class Heartbeat:
    interval: Annotated[Duration, Gt(0)] = 5.0
    orphan_after: Annotated[Duration, Gt(0)] = 120.0


@dataclass(frozen=True)
class Memory:
    growth_limit: Size = 100_000_000


@dataclass(frozen=True)
class Logs:
    # An attempt whose log grows past this is killed (a runaway loop printing would fill
    # the disk, and then the journal could not be written); 0: no limit.
    max_size: Size = 1 << 30


@dataclass(frozen=True)
class Containment:
    """What a change to the user's own checkout, written while tasks ran, does: `fail`
    sends back every attempt that was running when it was written (nothing of them is
    merged); `warn` says so and lets them land (for people who keep working in their
    checkout during a run: abreast cannot tell their edits from an agent's); `protect`
    keeps tasks from writing there at all (the checkout read-only to them, in a mount
    namespace of their own: executor/protect.py), so that a change there is the user's,
    and falls back to `fail` where user namespaces are off."""

    main_checkout: Literal["fail", "warn", "protect"] = "fail"


def _inside(v: str) -> str:
    parts = v.replace("\\", "/").split("/")
    if not v or v.startswith("/") or ".." in parts or parts[0] == ".git" or "\0" in v:
        raise ValueError(
            "must be a path relative to the repository root, inside it (no leading '/', "
            "no '..', not in .git)"
        )
    return v


# A path relative to the repository root, inside it.
RelPath = Annotated[str, MinLen(1), After(_inside)]


@dataclass(frozen=True)
class Worktrees:
    """What task and check worktrees get beyond the repository's committed files (with
    `isolation: worktree`). Both take only paths git ignores: anything else would be
    committed with a task's work."""

    copy: Annotated[
        list[RelPath], Doc("files or directories of your checkout copied into each worktree")
    ] = field(default_factory=list)
    keep: Annotated[
        list[RelPath], Doc("ignored paths a reused worktree keeps from one task to the next")
    ] = field(default_factory=list)
    pythonpath: Annotated[
        bool, Doc("put the worktree's copy of editable-installed sources first on PYTHONPATH")
    ] = True
    node_links: Annotated[
        bool,
        Doc(
            "link the checkout's workspace packages (node_modules links into the repository) "
            "to the worktree's own copies, in its node_modules"
        ),
    ] = True


@dataclass(frozen=True)
class Merge:
    """The merge queue (with `isolation: worktree`)."""

    batch: Annotated[
        int,
        Ge(1),
        Le(100),
        Doc("at most this many queued merges checked together; a red batch is split"),
    ] = 1
    max_file_size: Annotated[
        Size,
        Doc(
            "a task whose commits add a file larger than this is sent back, nothing of "
            "it merged (git hosts refuse such files: GitHub above 100 MiB); 0: no limit"
        ),
    ] = 100 << 20


@dataclass(frozen=True)
class TaskFields:
    """What `defaults` may set for every task."""

    agent: str | None = None
    shell: Annotated[
        Shell,
        Doc(
            "the shell `run` is given to: sh (/bin/sh -e) or bash (bash -e -o pipefail: "
            "a pipeline fails when a command in it fails)"
        ),
    ] = "sh"
    timeout: Annotated[Duration | None, Gt(0)] = None
    retries: Annotated[int, Ge(0), Le(100)] = 0
    backoff: Backoff = Backoff()
    estimate: Duration | None = None
    max_iterations: Annotated[int, Ge(1), Le(100)] = 3
    carry_work: Annotated[
        bool,
        Doc(
            "an attempt after one that was sent back starts with that attempt's work, "
            "uncommitted in its worktree, to build on rather than redo"
        ),
    ] = False
    ports: Annotated[
        int, Ge(0), Le(64), Doc("free TCP ports each attempt gets, in $ABREAST_PORT(S)")
    ] = 0
    max_memory: Annotated[
        Size | None,
        Ge(1 << 20),
        Doc("an attempt whose process tree uses more memory (RSS) than this is killed"),
    ] = None
    max_tokens: Annotated[
        int | None,
        Ge(1),
        Doc(
            "an attempt whose answers through the key proxy say they used more tokens "
            "(input + output) than this is refused further requests and killed"
        ),
    ] = None
    orphan_after: Annotated[
        Duration | None,
        Gt(0),
        Doc(
            "how long an attempt may show no sign of life before it is taken for hung and "
            "killed; default: heartbeat.orphan_after"
        ),
    ] = None
    pools: list[str] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)
    env: dict[str, EnvValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Task(TaskFields):
    """One task of the workflow, with `defaults` already merged in."""

    id: str = ""
    description: str | None = None
    needs: list[str] = field(default_factory=list)
    prompt: PromptText | None = None
    run: Command | None = None
    owns: list[str] = field(default_factory=list)
    keys: str | None = None
    signals: list[str] = field(default_factory=list)
    when: Condition | None = None
    gate: Condition | None = None
    send_back: SendBack | None = None


@dataclass(frozen=True)
class Workflow:
    """A whole workflow file, validated and with defaults merged into tasks."""

    version: Literal[1]
    tasks: Annotated[dict[str, Task], MinLen(1)]
    name: Annotated[str, Pattern(f"^({TASK_ID_PATTERN})?$")] = ""
    max_parallel: Annotated[int, Ge(1), Le(MAX_PARALLEL)] = 4
    base: Annotated[str, MinLen(1), After(_no_nul)] = "HEAD"
    isolation: Literal["worktree", "none"] | None = None
    flags: dict[str, Scalar] = field(default_factory=dict)
    defaults: TaskFields = TaskFields()
    agents: dict[str, Agent] = field(default_factory=dict)
    pools: dict[str, Annotated[int, Ge(1)]] = field(default_factory=dict)
    keys: dict[str, KeyPool] = field(default_factory=dict)
    locks: dict[str, LockSpec] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    events: Events = Events()
    resources: Resources = Resources()
    heartbeat: Heartbeat = Heartbeat()
    memory: Memory = Memory()
    logs: Logs = Logs()
    containment: Containment = Containment()
    worktrees: Worktrees = Worktrees()
    merge: Merge = Merge()

    # Set after validation (not read from the file): where the workflow was read from and
    # the sha256 of its bytes (by the loader); what the validator learnt of the dependency
    # structure, kept for the planner: (preds by task index, waves, wave of each task),
    # signal waits counting as needs.
    source: str = field(default="", init=False)
    source_sha256: str = field(default="", init=False)
    _dependency_levels: tuple[list[list[int]], list[list[int]], list[int]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def task_list(self) -> list[Task]:
        return list(self.tasks.values())

    def key_pool_of(self, task: Task) -> str | None:
        """The key pool `task`'s attempts draw on: its own `keys`, else its agent's (a task
        with `run:` does not take its agent's)."""
        if task.keys:
            return task.keys
        agent = self.agents.get(task.agent) if task.run is None and task.agent else None
        return agent.keys if agent else None

    def evolve(self, *, same_needs: bool, **changes: Any) -> Workflow:
        """A copy with `changes` that still knows which file it was read from (and its
        checksum), which `dataclasses.replace` forgets: a resume, a report and the note
        on a run of the same file go by them. `same_needs`: the tasks' dependencies are
        unchanged, so the validator's dependency levels still hold."""
        new = dataclasses.replace(self, **changes)
        object.__setattr__(new, "source", self.source)
        object.__setattr__(new, "source_sha256", self.source_sha256)
        if same_needs:
            object.__setattr__(new, "_dependency_levels", self._dependency_levels)
        return new


# Fields of a class that the file does not set (schema.py leaves them out).
NOT_IN_FILE = frozenset({"source", "source_sha256", "_dependency_levels"})
