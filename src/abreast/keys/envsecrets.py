"""Secrets of the environment tasks and checks run with, known by their variable's name.

A task inherits abreast's environment and gets its `env:` (`GH_TOKEN: ${GH_TOKEN}`); an
agent run with `curl -v`, a test that prints its settings, a failure's stack trace can
print such a value, and abreast would carry it on: into the journal (a failure's last
lines), the summary, the feedback to the next attempt, `abreast report`, the JUnit file
CI keeps, a GitHub annotation. The values of variables whose names say they are secret
(`*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*API_KEY*`, `*_KEY`, ...) are masked there as the
key pools' keys are: shown by fingerprint, `[key 1a2b3c4d]`.

Only values of at least MIN_CHARS characters: a short value (`DB_PASSWORD=postgres`)
would mask the same word wherever a log says it, and is no credential worth the noise.
Names of paths to secrets (`*_FILE`, `*_PATH`, `*_DIR`) are not secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from abreast.keys.pool import fingerprint

MIN_CHARS = 12
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE_?KEY|API_?KEY|ACCESS_?KEY"
    r"|(?:^|_)(?:AUTH|KEY)$",
    re.IGNORECASE,
)
_NOT_A_VALUE = re.compile(r"_(?:FILE|PATH|DIR|SOCK)$", re.IGNORECASE)


def secret_name(name: str) -> bool:
    """Whether a variable of this name holds a secret by its name."""
    return bool(_SECRET_NAME.search(name)) and not _NOT_A_VALUE.search(name)


def env_secrets(envs: Iterable[Mapping[str, str]]) -> list[tuple[str, str]]:
    """(fingerprint, value) of each secret in these environments, once each, longest
    first (a value inside another is replaced after it)."""
    found = {
        value
        for env in envs
        for name, value in env.items()
        if len(value) >= MIN_CHARS and secret_name(name) and not name.startswith("ABREAST_")
    }
    return [(fingerprint(v), v) for v in sorted(found, key=lambda v: (-len(v), v))]
