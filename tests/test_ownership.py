from __future__ import annotations

import pytest

from abreast.plan.ownership import globs_overlap, nesting_example, overlapping_pairs, owns_match


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("src/**", "src/auth/*.py", True),
        ("backend/**", "frontend/**", False),
        ("*.py", "src/a.py", True),  # no '/' : any depth
        ("src/*.py", "src/a/b.py", False),  # '*' stays inside one directory
        ("src", "src/x/y", True),  # a directory covers its subtree
        ("docs/*.md", "docs/[a-c]*.txt", False),
        ("a/[!x]b", "a/xb", False),
        ("a/[!x]b", "a/yb", True),
        ("/README.md", "README.md", True),
        ("/README.md", "sub/README.md", False),  # leading '/' anchors at the root
        ("src/**/test_*.py", "src/a/b/test_x.py", True),
        ("**/*.js", "lib/*.ts", False),
        ("*.md", "src/*.py", False),  # wildcard names match files, not subtrees
        ("lib/", "lib/x.ts", True),
        ("a*b", "ab*", True),
        ("a*c", "b*", False),
    ],
)
def test_globs_overlap(a: str, b: str, overlap: bool) -> None:
    assert globs_overlap(a, b) is overlap
    assert globs_overlap(b, a) is overlap


@pytest.mark.parametrize(
    ("pattern", "path", "match"),
    [
        ("src/**", "src/a/b.py", True),
        ("*.py", "a/b/c.py", True),
        ("src/*.py", "src/a/b.py", False),
        ("backend", "backend/x", True),
        ("backend", "frontend/x", False),
        ("x/[ab]", "x/[ab]", False),
        ("x/\\[ab]", "x/[ab]", True),
    ],
)
def test_owns_match(pattern: str, path: str, match: bool) -> None:
    assert owns_match(pattern, path) is match


def test_overlapping_pairs_names_the_patterns() -> None:
    owns = [["backend/**"], ["frontend/**"], ["backend/auth/*.py", "docs/*"], [], ["*.md"]]
    assert overlapping_pairs(owns) == [
        (0, 2, ("backend/**", "backend/auth/*.py")),
        (0, 4, ("backend/**", "*.md")),  # backend/README.md
        (1, 4, ("frontend/**", "*.md")),
        (2, 4, ("docs/*", "*.md")),
    ]


def test_plain_names_that_meet_only_as_directory_and_file_are_explained() -> None:
    # a.txt and b.txt both claim b.txt/a.txt: an overlap, but one worth explaining.
    assert globs_overlap("a.txt", "b.txt")
    assert nesting_example(["a.txt"], ["b.txt"]) == "b.txt/a.txt"
    assert nesting_example(["README.md"], ["Makefile", "docs/**"]) is None  # docs/README.md
    assert nesting_example(["a.txt", "b.txt"], ["b.txt"]) is None  # the same name: real
    assert nesting_example(["src/**"], ["api"]) is None  # a slash: not plain names
    assert nesting_example(["/a.txt"], ["/b.txt"]) is None  # anchored: no overlap at all
    assert not globs_overlap("/a.txt", "/b.txt")
