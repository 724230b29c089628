"""
Tests for L{primed.proving}: which numbers go to the proof pool, and what
the protocols answer, with a proof pool the test answers by hand.
"""

import gmpy2
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.trial import unittest

from fakes import HandDrivenPool, ThreadlessReactor, connect, makeFactory
from hardnumbers import STRONG_PSEUDOPRIMES, randomPrime
from primed.primality import DETERMINISTIC_LIMIT, INLINE_MAX_BITS
from primed.proofpool import RESULTS, ProofUnavailable
from primed.proving import PROVEN_INLINE_MAX_BITS, ProvingChecker
from primed.udp import PrimeDatagramProtocol

SMALL_PRIME = randomPrime(150, 1)  # inline BPSW, then a proof
OTHER_PRIME = randomPrime(150, 2)
BIG_PRIME = randomPrime(400, 1)  # the thread pool, then a proof


class HandProofPool:
    """
    Records what is asked; the test answers.
    """

    def __init__(self):
        self.asked = []
        self.results = dict.fromkeys(RESULTS, 0)

    room = True

    def prove(self, number, source=None, admitted=False):
        assert admitted  # the checker asked hasRoom first
        d = defer.Deferred(lambda d: self.cancelled.append(number))
        self.asked.append((number, source, d))
        return d

    def hasRoom(self, source):
        return self.room

    def notifyRoom(self, callback):
        self.roomWaiters.append(callback)

    def cancelRoomWaiter(self, callback):
        self.roomWaiters.remove(callback)

    cancelled: list


class ProvingCheckerTests(unittest.TestCase):
    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.threads = HandDrivenPool()
        self.proofs = HandProofPool()
        self.proofs.cancelled = []
        self.proofs.roomWaiters = []
        self.checker = ProvingChecker(self.reactor, self.threads, self.proofs, maxDigits=130)

    def test_inlineOnlyBelowTheProvenLimit(self):
        self.assertEqual(self.checker.inlineMaxBits, PROVEN_INLINE_MAX_BITS)
        self.assertLess(2**PROVEN_INLINE_MAX_BITS, DETERMINISTIC_LIMIT)
        self.assertGreaterEqual(2**(PROVEN_INLINE_MAX_BITS + 1), DETERMINISTIC_LIMIT)

    def test_belowTheLimitNoProof(self):
        """
        From 2**81 to the limit every answer is a proof already.
        """
        for n in (DETERMINISTIC_LIMIT - 2, STRONG_PSEUDOPRIMES[0], 2**81 + 1):
            self.assertIs(self.successResultOf(self.checker.submit(n)), False)
        prime = int(gmpy2.prev_prime(DETERMINISTIC_LIMIT))
        self.assertGreater(prime, 2**PROVEN_INLINE_MAX_BITS)
        self.assertIs(self.successResultOf(self.checker.submit(prime)), True)
        self.assertEqual(self.proofs.asked, [])
        self.assertEqual(self.threads.work, [])

    def test_inlineCompositeAtOnce(self):
        """
        Up to INLINE_MAX_BITS a composite is answered F without the thread
        pool or the proof pool, as without --prove.
        """
        for n in (DETERMINISTIC_LIMIT, SMALL_PRIME * 3, 2**INLINE_MAX_BITS - 1):
            self.assertIs(self.successResultOf(self.checker.submit(n)), False)
        self.assertEqual((self.proofs.asked, self.threads.work), ([], []))

    def test_inlineProbablePrimeIsProved(self):
        d = self.checker.submit(SMALL_PRIME, "192.0.2.1", object())
        [(number, source, proof)] = self.proofs.asked
        self.assertEqual((number, source), (SMALL_PRIME, "192.0.2.1"))
        self.assertEqual(self.threads.work, [])
        self.assertNoResult(d)
        proof.callback(True)
        self.assertIs(self.successResultOf(d), True)

    def test_bigNumbersTakeTheThreadPoolFirst(self):
        composite = self.checker.submit(BIG_PRIME * 3)
        prime = self.checker.submit(BIG_PRIME)
        self.assertEqual(self.checker.queued, 2)
        self.threads.runAll()
        self.assertIs(self.successResultOf(composite), False)
        [(number, source, proof)] = self.proofs.asked
        self.assertEqual((number, source), (BIG_PRIME, None))
        self.assertEqual(self.checker.queued, 0)  # the thread is free during the proof
        proof.callback(False)  # whatever the proof says is the answer
        self.assertIs(self.successResultOf(prime), False)

    def test_tooBig(self):
        prime = randomPrime(440, 2)  # 133 digits
        self.assertEqual(len(str(prime)), 133)
        d = self.checker.submit(prime)
        self.threads.runAll()
        self.assertEqual(self.failureResultOf(d, ProofUnavailable).value.reason, "too_big")
        self.assertEqual(self.proofs.results["too_big"], 1)
        self.assertEqual(self.proofs.asked, [])
        edge = int("9" * 130)  # the longest proved: 130 digits
        self.checker.submit(int(gmpy2.prev_prime(edge)))
        self.threads.runAll()
        self.assertEqual(len(self.proofs.asked), 1)

    def test_lostConnectionCancels(self):
        connection = object()
        other = object()
        mine = self.checker.submit(SMALL_PRIME, "a", connection)
        theirs = self.checker.submit(SMALL_PRIME, "b", other)
        running = self.checker.submit(BIG_PRIME, "a", connection)  # in a thread
        self.checker.cancel(connection)
        self.failureResultOf(mine, defer.CancelledError)
        self.failureResultOf(running, defer.CancelledError)
        self.assertEqual(self.proofs.cancelled, [SMALL_PRIME])
        self.assertNoResult(theirs)
        self.threads.runAll()  # the thread's result goes nowhere
        self.assertEqual(len(self.proofs.asked), 2)
        self.checker.cancel(connection)  # twice: nothing left
        self.assertEqual(self.checker._asks.keys(), {other})
        self.proofs.asked[1][2].callback(True)
        self.assertIs(self.successResultOf(theirs), True)
        self.assertEqual(self.checker._asks, {})

    def test_roomForProofs(self):
        """
        A big number needs room in the proof pool too; a TCP connection
        waiting for it is called back by the proof pool.
        """
        self.assertTrue(self.checker.hasRoom("a"))
        self.proofs.room = False
        self.assertFalse(self.checker.hasRoom("a"))
        calls = []
        self.checker.notifyRoom("a", lambda: calls.append(1))
        self.assertEqual(len(self.proofs.roomWaiters), 1)
        self.proofs.roomWaiters.pop()()
        self.assertEqual(calls, [1])
        waiter = lambda: None  # noqa: E731
        self.checker.notifyRoom("a", waiter)
        self.checker.cancelRoomWaiter(waiter)
        self.assertEqual(self.proofs.roomWaiters, [])

    def test_threadFailure(self):
        d = self.checker.submit(BIG_PRIME)
        self.checker.abandon()
        self.threads.runAll()
        self.failureResultOf(d)


class ProtocolTests(unittest.TestCase):
    """
    What the protocols answer for proofs: T, F, and E for no proof.
    """

    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.proofs = HandProofPool()
        self.proofs.cancelled = []
        self.proofs.roomWaiters = []
        self.checker = ProvingChecker(self.reactor, HandDrivenPool(), self.proofs)

    def test_tcp(self):
        factory = makeFactory(self.checker, self.reactor)
        protocol, transport = connect(factory)
        protocol.dataReceived(b"%d\n%d\n%d\n7\n" % (SMALL_PRIME, OTHER_PRIME,
                                                   SMALL_PRIME * 7))
        self.assertEqual(transport.value(), b"")
        first, second = self.proofs.asked
        second[2].errback(ProofUnavailable("timeout"))
        self.assertEqual(transport.value(), b"")  # in order
        first[2].callback(True)
        self.assertEqual(transport.value(), b"T\nE\nF\nT\n")
        self.flushLoggedErrors()
        self.assertEqual(self.flushLoggedErrors(ProofUnavailable), [])

    def test_tcpLost(self):
        factory = makeFactory(self.checker, self.reactor)
        protocol, transport = connect(factory)
        transport.getPeer = lambda: IPv4Address("TCP", "192.0.2.7", 4)
        protocol.dataReceived(b"%d\n" % SMALL_PRIME)
        protocol.connectionLost(None)
        self.assertEqual(self.proofs.cancelled, [SMALL_PRIME])

    def test_udp(self):
        protocol = PrimeDatagramProtocol(self.checker, self.reactor)
        sent = []
        protocol._send = lambda data, addr: sent.append((data, addr))
        protocol.transport = object()
        addr = ("192.0.2.9", 53)
        protocol.datagramReceived(b"%d\n" % SMALL_PRIME, addr)
        protocol.datagramReceived(b"%d\n" % OTHER_PRIME, addr)
        self.assertEqual([a[1] for a in self.proofs.asked], ["192.0.2.9", "192.0.2.9"])
        self.proofs.asked[0][2].callback(True)
        self.proofs.asked[1][2].errback(ProofUnavailable("busy"))
        self.assertEqual(sent, [(b"T\n", addr), (b"E\n", addr)])
        self.assertEqual(protocol.inflight, 0)
