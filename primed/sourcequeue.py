"""
Waiting work served round-robin by source: the proof pool's queue
(L{primed.proofpool}).

One source (an address, L{primed.sources.sourceKey}) with a hundred items
waiting gets one turn in each round like a source with one, so its backlog
delays another source's item by at most one item per source in the round,
whatever it queued first.  Kept apart from the pool so that the check
pool's fair queue (issue 21) and this one can become one.
"""

from collections import deque

__all__ = ["SourceQueue"]


class SourceQueue:
    """
    Waiting work, served round-robin by source: one item of each source
    in turn, in the order sources first queued, each source's items first
    come, first served.
    """

    def __init__(self):
        self._bySource: dict[object, deque] = {}
        self._turns: deque = deque()  # sources with work, next first
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def countFor(self, source) -> int:
        items = self._bySource.get(source)
        return len(items) if items else 0

    def push(self, source, item, first: bool = False) -> None:
        """
        Queue C{item} for C{source}; C{first} puts it ahead of the source's
        other items, and the source at the head of the turns.
        """
        items = self._bySource.get(source)
        if items is None:
            items = self._bySource[source] = deque()
            if first:
                self._turns.appendleft(source)
            else:
                self._turns.append(source)
        elif first:
            self._turns.remove(source)
            self._turns.appendleft(source)
        if first:
            items.appendleft(item)
        else:
            items.append(item)
        self.size += 1

    def pop(self):
        """
        The next item, taking turns between sources.

        @raise IndexError: nothing is queued.
        """
        source = self._turns.popleft()
        items = self._bySource[source]
        item = items.popleft()
        if items:
            self._turns.append(source)
        else:
            del self._bySource[source]
        self.size -= 1
        return item

    def remove(self, source, item) -> None:
        items = self._bySource.get(source)
        if items is None or item not in items:
            return
        items.remove(item)
        self.size -= 1
        if not items:
            del self._bySource[source]
            self._turns.remove(source)

    def clear(self) -> list:
        """
        Empty the queue. @return: everything it held.
        """
        everything = [item for items in self._bySource.values() for item in items]
        self._bySource.clear()
        self._turns.clear()
        self.size = 0
        return everything
