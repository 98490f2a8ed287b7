"""The workflow file's data model (version 1), as pydantic models.

These models check shapes and values; references between sections, ids and
conditions are checked in `validate.py`, which also merges `defaults` into
each task. Every model is frozen: a loaded workflow never changes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
)

from abreast.spec.durations import parse_duration, parse_rate, parse_size

TASK_ID_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
# TASK_ID_PATTERN in words (task ids, the workflow's name, run ids)
ID_RULE = "1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}"
FLAG_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
ENV_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*((\d+(\.\d+)?(ms|s|m|h|d))+|\d+(\.\d+)?)\s*$"},
            ],
            "description": "seconds, or a duration like 90s, 45m, 2h, 1h30m",
        }
    ),
]
Rate = Annotated[
    tuple[int, float],
    BeforeValidator(parse_rate),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*\d+\s*/\s*\d*\.?\d*\s*[a-z]+\s*$",
            "description": "requests per window, like 100/min, 10/s, 50/10s",
        }
    ),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
            "description": "bytes, or a size like 100MB, 2GiB",
        }
    ),
]


def _env_value(v: object) -> object:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return str(v)
    return v


EnvValue = Annotated[str, BeforeValidator(_env_value)]
Scalar = bool | int | float | str


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=False, defer_build=True
    )


class Backoff(_Model):
    """Waits between attempts: initial, then times factor, capped at max, with jitter."""

    initial: Duration = 1.0
    factor: float = Field(2.0, ge=1.0)
    max: Duration = 8.0

    def delay_s(self, retry: int) -> float:
        """The nominal wait before retry number `retry` (1-based), before jitter."""
        return float(min(self.max, self.initial * self.factor ** (retry - 1)))


class Agent(_Model):
    """A reusable command profile for coding agents."""

    run: str = Field(
        min_length=1, description="shell command; the prompt arrives in $ABREAST_PROMPT"
    )
    keys: str | None = Field(None, description="key pool this agent draws from")
    max_instances: int | None = Field(None, ge=1, description="1 makes the agent a singleton")
    env: dict[str, EnvValue] = Field(default_factory=dict)


class KeyPool(_Model):
    """API keys read from environment variables, each kept under `limit`."""

    from_: list[Annotated[str, Field(pattern=f"^{ENV_PATTERN}$")]] = Field(
        alias="from", min_length=1, description="environment variables holding the real keys"
    )
    limit: Rate | None = Field(None, description="per key, e.g. 100/min")
    env: str | None = Field(
        None,
        pattern=f"^{ENV_PATTERN}$",
        description="variable the task receives its key (or proxy token) in",
    )
    upstream: str | None = Field(
        None, pattern=r"^https?://", description="provider base URL; turns on proxy mode"
    )
    style: Literal["anthropic", "openai"] = "anthropic"
    max_concurrent_per_key: int | None = Field(None, ge=1)
    backoff: Backoff = Backoff()
    max_retries: int = Field(4, ge=0, description="backoff rounds when every key is limited")

    model_config = ConfigDict(populate_by_name=True)  # merged with _Model's

    @property
    def key_env(self) -> str:
        """The variable a task receives its key or token in."""
        if self.env:
            return self.env
        return "ANTHROPIC_API_KEY" if self.style == "anthropic" else "OPENAI_API_KEY"


class LockSpec(_Model):
    ttl: Duration = Field(900.0, gt=0, description="a dead holder loses the lock after this")


class Check(_Model):
    """A command run on the merge result before a task's work lands."""

    run: str = Field(min_length=1)
    name: str | None = None
    lock: str | None = None
    timeout: Duration | None = None


class Events(_Model):
    nats: str | None = Field(None, pattern=r"^(nats|tls)://")
    subject: str = Field("abreast.events", min_length=1)


class Resources(_Model):
    """The adaptive cap: CPU or memory use (percent) at or above each threshold lowers it."""

    monitor: bool = True
    thresholds: tuple[float, float, float] = (50.0, 70.0, 80.0)

    @field_validator("thresholds")
    @classmethod
    def _increasing(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not (0 < v[0] < v[1] < v[2] <= 100):
            raise ValueError("thresholds must be three increasing percentages in (0, 100]")
        return v


class Heartbeat(_Model):
    interval: Duration = Field(5.0, gt=0)
    orphan_after: Duration = Field(120.0, gt=0)


class Memory(_Model):
    growth_limit: Size = 100_000_000


class TaskFields(_Model):
    """What `defaults` may set for every task."""

    agent: str | None = None
    timeout: Duration | None = Field(None, gt=0)
    retries: int = Field(0, ge=0, le=100)
    backoff: Backoff = Backoff()
    estimate: Duration | None = None
    max_iterations: int = Field(3, ge=1, le=100)
    pools: list[str] = Field(default_factory=list)
    locks: list[str] = Field(default_factory=list)
    env: dict[str, EnvValue] = Field(default_factory=dict)


class Task(TaskFields):
    """One task of the workflow, with `defaults` already merged in."""

    id: str = ""
    description: str | None = None
    needs: list[str] = Field(default_factory=list)
    prompt: str | None = None
    run: str | None = Field(None, min_length=1)
    owns: list[str] = Field(default_factory=list)
    keys: str | None = None
    signals: list[str] = Field(default_factory=list)
    when: str | None = None
    gate: str | None = None


class Workflow(_Model):
    """A whole workflow file, validated and with defaults merged into tasks."""

    version: Literal[1]
    name: str = Field("", pattern=f"^({TASK_ID_PATTERN})?$")
    max_parallel: int = Field(4, ge=1, le=10_000)
    base: str = Field("HEAD", min_length=1)
    isolation: Literal["worktree", "none"] | None = None
    flags: dict[str, Scalar] = Field(default_factory=dict)
    defaults: TaskFields = TaskFields()
    agents: dict[str, Agent] = Field(default_factory=dict)
    pools: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    keys: dict[str, KeyPool] = Field(default_factory=dict)
    locks: dict[str, LockSpec] = Field(default_factory=dict)
    checks: list[Check] = Field(default_factory=list)
    events: Events = Events()
    resources: Resources = Resources()
    heartbeat: Heartbeat = Heartbeat()
    memory: Memory = Memory()
    tasks: dict[str, Task] = Field(min_length=1)

    # Where the workflow was read from and the sha256 of its bytes, set by the loader.
    _source: str = PrivateAttr("")
    _source_sha256: str = PrivateAttr("")
    # What the validator learnt of the dependency structure, kept for the planner:
    # (preds by task index, waves, wave of each task). Signal waits count as needs.
    _dependency_levels: tuple[list[list[int]], list[list[int]], list[int]] | None = PrivateAttr(
        None
    )

    @property
    def source(self) -> str:
        return self._source

    @property
    def source_sha256(self) -> str:
        return self._source_sha256

    def task_list(self) -> list[Task]:
        return list(self.tasks.values())


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the workflow file, for editors."""
    schema = Workflow.model_json_schema(by_alias=True, mode="validation")
    task = schema.get("$defs", {}).get("Task", {}).get("properties", {})
    task.pop("id", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "abreast workflow file (version 1)"
    return schema
