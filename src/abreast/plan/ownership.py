"""Whether two `owns` globs can match the same path.

Patterns follow gitignore rules: a pattern without '/' (other than at the end)
matches at any depth; a leading '/' anchors at the root; `**` spans any number
of directories; `*`, `?` and `[...]` match within one name. A pattern naming a
directory (`src`, `src/api`, `docs/`) covers everything in it. Unlike gitignore,
a pattern whose last name has a wildcard (`*.py`, `src/test_*`) matches files
only: `*.md` and `src/*.py` do not both claim `src/x.py/y.md`, so tasks owning
them run side by side. Matching a path (`owns_match`) and deciding that two
patterns overlap use this one definition. Overlap is decided exactly, by walking
both patterns together (name by name, then character by character).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import lru_cache

_STAR = "*"
_ANY = "?"
Token = str | frozenset[str] | tuple[bool, frozenset[str]]  # char, class, (negated, class)


def normalize(pattern: str) -> tuple[str, ...]:
    """Segments of `pattern` in anchored form, ending with `**` (a match covers its subtree)."""
    p = pattern.strip()
    while p.startswith("./"):
        p = p[2:]
    anchored = p.startswith("/")
    p = p.strip("/")
    is_dir = pattern.rstrip().endswith("/")
    segments = [s for s in p.split("/") if s]
    if not anchored and len(segments) == 1:
        segments = ["**", *segments]
    if is_dir or not any(c in segments[-1] for c in "*?["):
        segments.append("**")  # a directory covers its subtree
    out: list[str] = []
    for s in segments:
        if not (s == "**" and out and out[-1] == "**"):
            out.append(s)
    return tuple(out)


def globs_overlap(a: str, b: str) -> bool:
    return _segments_overlap(normalize(a), normalize(b))


def owns_match(pattern: str, path: str) -> bool:
    """Whether repository-relative `path` is matched by the `owns` glob `pattern`."""
    literal = tuple(_escape(s) for s in path.strip("/").split("/") if s)
    return _segments_overlap(normalize(pattern), literal)


def _escape(name: str) -> str:
    return "".join("\\" + c if c in "*?[\\" else c for c in name)


def overlapping_pairs(owns: Sequence[Sequence[str]]) -> list[tuple[int, int, tuple[str, ...]]]:
    """(i, j, patterns involved) for every pair of tasks whose `owns` overlap."""
    norm = [[(p, normalize(p)) for p in pats] for pats in owns]
    with_owns = [i for i, pats in enumerate(norm) if pats]
    # Patterns whose first segment is a plain name can only meet patterns with the same
    # first segment, or with a wildcard there; bucket them to skip the rest.
    by_head: dict[str, list[int]] = {}
    wild: list[int] = []
    for i in with_owns:
        heads = {_head(n) for _, n in norm[i]}
        if None in heads:
            wild.append(i)
        else:
            for h in heads:
                by_head.setdefault(str(h), []).append(i)
    candidates: set[tuple[int, int]] = set()
    for members in by_head.values():
        candidates.update(itertools.combinations(sorted(set(members)), 2))
    for w in wild:
        candidates.update((min(w, i), max(w, i)) for i in with_owns if i != w)
    out = []
    for i, j in sorted(candidates):
        pats: list[str] = []
        for (pa, na), (pb, nb) in itertools.product(norm[i], norm[j]):
            if _segments_overlap(na, nb):
                pats += [p for p in (pa, pb) if p not in pats]
        if pats:
            out.append((i, j, tuple(pats)))
    return out


def nesting_example(owns_a: Sequence[str], owns_b: Sequence[str]) -> str | None:
    """A path showing how two tasks' `owns` meet when they meet only because a plain name
    of one could be a directory holding a plain name of the other (`a.txt` and `b.txt`
    both claim `b.txt/a.txt`); None when they meet otherwise, or not at all."""
    example = None
    for pa, pb in itertools.product(owns_a, owns_b):
        if not globs_overlap(pa, pb):
            continue
        x, y = pa.strip().rstrip("/"), pb.strip().rstrip("/")
        if not (_plain_name(x) and _plain_name(y) and x != y):
            return None
        example = example or f"{y}/{x}"
    return example


def nesting_hint(via: str) -> str:
    """What to tell a user about an overlap `nesting_example` found."""
    outer, inner = via.split("/")
    return (
        f"their owns meet only through a directory named after one of them ({via}); "
        f"write /{inner} and /{outer} for files at the top"
    )


def _plain_name(pattern: str) -> bool:
    return bool(pattern) and not any(c in pattern for c in "/*?[")


def _head(segments: tuple[str, ...]) -> str | None:
    first = segments[0]
    return None if any(c in first for c in "*?[") else first


@lru_cache(maxsize=4096)
def _segments_overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    stack, seen = [(0, 0)], set()
    while stack:
        i, j = stack.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "**":
            stack.append((i + 1, j))
            if j < len(b):
                stack.append((i, j + 1))
        if j < len(b) and b[j] == "**":
            stack.append((i, j + 1))
            if i < len(a):
                stack.append((i + 1, j))
        if (
            i < len(a)
            and j < len(b)
            and a[i] != "**"
            and b[j] != "**"
            and _names_overlap(a[i], b[j])
        ):
            stack.append((i + 1, j + 1))
    return False


@lru_cache(maxsize=4096)
def _names_overlap(a: str, b: str) -> bool:
    ta, tb = _tokens(a), _tokens(b)
    stack, seen = [(0, 0)], set()
    while stack:
        p, q = stack.pop()
        if (p, q) in seen:
            continue
        seen.add((p, q))
        if p == len(ta) and q == len(tb):
            return True
        if p < len(ta) and ta[p] == _STAR:
            stack.append((p + 1, q))
        if q < len(tb) and tb[q] == _STAR:
            stack.append((p, q + 1))
        if p < len(ta) and q < len(tb) and _chars_meet(ta[p], tb[q]):
            stack.append((p if ta[p] == _STAR else p + 1, q if tb[q] == _STAR else q + 1))
    return False


def _tokens(name: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == "*":
            if not out or out[-1] != _STAR:
                out.append(_STAR)
        elif c == "?":
            out.append(_ANY)
        elif c == "[" and (end := _class_end(name, i)) > 0:
            body = name[i + 1 : end]
            negated = body[:1] in ("!", "^")
            out.append((negated, _expand(body[1:] if negated else body)))
            i = end
        elif c == "\\" and i + 1 < len(name):
            i += 1
            out.append(name[i])
        else:
            out.append(c)
        i += 1
    return out


def _class_end(name: str, start: int) -> int:
    """Index of the ']' closing the class opened at `start`, or -1 (then '[' is literal)."""
    j = start + 1
    if name[j : j + 1] in ("!", "^"):
        j += 1
    if name[j : j + 1] == "]":
        j += 1  # a ']' first in the class is a member
    return name.find("]", j)


def _expand(body: str) -> frozenset[str]:
    chars: set[str] = set()
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            chars.update(chr(c) for c in range(ord(body[i]), ord(body[i + 2]) + 1))
            i += 3
        else:
            chars.add(body[i])
            i += 1
    return frozenset(chars)


def _chars_meet(x: Token, y: Token) -> bool:
    if x in (_STAR, _ANY) or y in (_STAR, _ANY):
        return True
    if isinstance(x, str) and isinstance(y, str):
        return x == y
    if isinstance(x, str):
        x, y = y, x
    assert isinstance(x, tuple)
    neg_x, set_x = x
    if isinstance(y, str):
        return (y in set_x) != neg_x
    assert isinstance(y, tuple)
    neg_y, set_y = y
    if neg_x and neg_y:
        return True
    if neg_x:
        return bool(set_y - set_x)
    if neg_y:
        return bool(set_x - set_y)
    return bool(set_x & set_y)
