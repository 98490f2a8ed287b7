"""Graph algorithms on dense integer DAGs: the one pure base `spec` and `plan` share.

Nodes are 0..n-1 and `preds[v]` lists the nodes v depends on. Everything here
is iterative (no recursion limit) and linear in nodes plus edges.
"""

from __future__ import annotations

from collections.abc import Sequence


def generations(preds: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[int]]:
    """Kahn's algorithm by levels: (waves, level of each node).

    Nodes left out of every wave lie on or behind a cycle; their level is -1.
    """
    n = len(preds)
    indegree = [len(p) for p in preds]
    succs: list[list[int]] = [[] for _ in range(n)]
    for v, ps in enumerate(preds):
        for p in ps:
            succs[p].append(v)
    level = [-1] * n
    wave = [v for v in range(n) if indegree[v] == 0]
    waves: list[list[int]] = []
    depth = 0
    while wave:
        waves.append(wave)
        nxt = []
        for v in wave:
            level[v] = depth
            for s in succs[v]:
                indegree[s] -= 1
                if indegree[s] == 0:
                    nxt.append(s)
        wave = nxt
        depth += 1
    return waves, level


def find_cycles(preds: Sequence[Sequence[int]], limit: int = 5) -> list[list[int]]:
    """Up to `limit` cycles, each a closed path [a, b, ..., a] where each node needs the next.

    One cycle per strongly connected component, so separate cycles are all named.
    """
    _, level = generations(preds)
    if min(level, default=0) >= 0:
        return []
    stuck = [v for v in range(len(preds)) if level[v] < 0]
    cycles = []
    for component in _components(stuck, preds):
        if len(component) > 1 or component[0] in preds[component[0]]:
            cycles.append(_cycle_in(component, preds))
            if len(cycles) >= limit:
                break
    return cycles


def _components(nodes: list[int], preds: Sequence[Sequence[int]]) -> list[list[int]]:
    """Strongly connected components among `nodes` (Tarjan's algorithm, iterative)."""
    allowed = set(nodes)
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            edges = preds[v]
            while i < len(edges) and (edges[i] not in allowed or edges[i] in index):
                w = edges[i]
                if w in on_stack:
                    low[v] = min(low[v], index[w])
                i += 1
            if i < len(edges):
                work.append((v, i + 1))
                work.append((edges[i], 0))
                continue
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                out.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def _cycle_in(component: list[int], preds: Sequence[Sequence[int]]) -> list[int]:
    # Every member needs another member, so walking needs-edges inside the component
    # must revisit a node; the walk from that node's first visit is a cycle.
    members = set(component)
    seen: dict[int, int] = {}
    path: list[int] = []
    v = min(component)
    while v not in seen:
        seen[v] = len(path)
        path.append(v)
        v = next(p for p in preds[v] if p in members)
    return [*path[seen[v] :], v]


def ancestors(v: int, preds: Sequence[Sequence[int]]) -> set[int]:
    """Every node `v` transitively needs."""
    seen: set[int] = set()
    stack = list(preds[v])
    while stack:
        u = stack.pop()
        if u not in seen:
            seen.add(u)
            stack.extend(preds[u])
    return seen
