"""
Tests for L{primed.sourcequeue}: turns between sources, each source's order.
"""

from twisted.trial import unittest

from primed.sourcequeue import SourceQueue


class SourceQueueTests(unittest.TestCase):
    def test_roundRobin(self):
        queue = SourceQueue()
        for source, item in [("a", 1), ("a", 2), ("a", 3), ("b", 4), ("c", 5), ("b", 6)]:
            queue.push(source, item)
        self.assertEqual(queue.countFor("a"), 3)
        self.assertEqual([queue.pop() for _ in range(6)], [1, 4, 5, 2, 6, 3])
        self.assertEqual(len(queue), 0)
        self.assertRaises(IndexError, queue.pop)

    def test_pushFirstAndRemove(self):
        queue = SourceQueue()
        queue.push("a", 1)
        queue.push("b", 2)
        queue.push("b", 3, first=True)
        queue.push("c", 4)
        queue.remove("c", 4)
        queue.remove("c", 4)  # already gone: ignored
        queue.remove("a", 99)
        self.assertEqual(queue.countFor("c"), 0)
        self.assertEqual([queue.pop() for _ in range(len(queue))], [3, 1, 2])

    def test_clear(self):
        queue = SourceQueue()
        queue.push("a", 1)
        queue.push("b", 2)
        self.assertEqual(sorted(queue.clear()), [1, 2])
        self.assertEqual(len(queue), 0)
        queue.push("a", 3)
        self.assertEqual(queue.pop(), 3)
