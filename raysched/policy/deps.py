"""Dependency tracking: a task waits in ``pending`` until every parent succeeded; a failed or
cancelled parent fails its descendants; cycles are refused at submission."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from raysched.errors import DependencyError

__all__ = ["DependencyGraph"]


class DependencyGraph:
    def __init__(self) -> None:
        self.children: dict[str, list[str]] = {}
        self.waiting: dict[str, set[str]] = {}  # child -> parents not yet succeeded

    @staticmethod
    def check_batch(
        batch: Mapping[str, Collection[str]], known: Collection[str] | Mapping[str, object]
    ) -> list[str]:
        """Validate a batch of (id -> parents): every parent must be known or in the batch, and the
        batch must be acyclic. Returns the ids in an order where parents come first."""
        for tid, parents in batch.items():
            for p in parents:
                if p == tid:
                    raise DependencyError(f"task {tid} depends on itself")
                if p not in batch and p not in known:
                    raise DependencyError(f"task {tid} depends on unknown task {p}")
        order: list[str] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done
        for root in batch:
            if state.get(root) == 2:
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            while stack:
                node, i = stack.pop()
                if i == 0:
                    if state.get(node) == 2:
                        continue
                    state[node] = 1
                parents = [p for p in batch.get(node, ()) if p in batch]
                if i < len(parents):
                    stack.append((node, i + 1))
                    p = parents[i]
                    if state.get(p) == 1:
                        raise DependencyError(f"dependency cycle through {p} and {node}")
                    if state.get(p) != 2:
                        stack.append((p, 0))
                else:
                    state[node] = 2
                    order.append(node)
        return order

    def add(self, tid: str, unmet: Collection[str]) -> bool:
        """Register ``tid`` waiting on ``unmet`` parents. True if it must wait."""
        for p in unmet:
            self.children.setdefault(p, []).append(tid)
        if unmet:
            self.waiting[tid] = set(unmet)
            return True
        return False

    def succeeded(self, tid: str) -> list[str]:
        """Parent ``tid`` succeeded: the children that are now free to run."""
        ready: list[str] = []
        for c in self.children.pop(tid, ()):
            w = self.waiting.get(c)
            if w is None:
                continue
            w.discard(tid)
            if not w:
                del self.waiting[c]
                ready.append(c)
        return ready

    def failed(self, tid: str) -> list[str]:
        """Parent ``tid`` ended without success: every waiting descendant, parents first."""
        out: list[str] = []
        stack = list(self.children.pop(tid, ()))
        while stack:
            c = stack.pop()
            if self.waiting.pop(c, None) is None:
                continue
            out.append(c)
            stack.extend(self.children.pop(c, ()))
        return out

    def ancestors_waiting(self, tid: str) -> set[str]:
        return set(self.waiting.get(tid, ()))

    def descendants(self, tid: str) -> list[str]:
        """Tasks waiting (transitively) on ``tid``."""
        out: list[str] = []
        seen: set[str] = set()
        stack = list(self.children.get(tid, ()))
        while stack:
            c = stack.pop()
            if c in seen or c not in self.waiting:
                continue
            seen.add(c)
            out.append(c)
            stack.extend(self.children.get(c, ()))
        return out
