"""Group commit for one kind of call: concurrent calls in a process go to the database as one batch.

A call that finds a free slot (`max_in_flight` of them) leads: it waits one turn of the event loop (so
that every task ready to call joins it) and runs the calls at the queue's head as one batch: at most
`max_batch`, and, when other slots are free, its share of the queue (`min_share` at least), the rest
going to those slots at once. Calls that arrive while the slots are busy queue; when a batch ends, the
first queued call leads the next one, so each batch is run by a task whose own call is in it (or was
taken by another leader), and no call waits on a timer. A call alone in the process is sent at once,
after that one loop turn.

The batch runs shielded from its leader's cancellation: the leader's caller leaving must not fail the
other calls in its batch. Each call gets its own outcome, a value or an exception.

No kept library does this (the PyPI packages for async batching are 0.x projects of one author, built
for model inference); the leader/follower hand-off here is the one rule the ledger needs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class _Call(Generic[Item, Outcome]):
    __slots__ = ("error", "finished", "item", "leads", "outcome", "taken", "woken")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.woken: anyio.Event | None = None  # while it waits: set when the outcome is in or it is to lead
        self.leads = False  # holds a slot: runs batches from the queue's head until its own has run
        self.taken = False  # in a batch that is running or ran
        self.finished = False
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None

    def wake(self) -> None:
        if self.woken is not None:
            self.woken.set()


class Combiner(Generic[Item, Outcome]):
    """Runs `run_batch(items)` for batches of concurrent calls; `run_batch` returns one outcome per item,
    in order (an exception in place of an outcome is raised to that item's caller alone)."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], Awaitable[Sequence[Outcome | BaseException]]],
        *,
        max_batch: int,
        max_in_flight: int = 1,
        min_share: int = 8,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.min_share = min_share  # the fewest calls a batch is split down to, to run beside another
        self._queue: deque[_Call[Item, Outcome]] = deque()
        self._in_flight = 0  # slots held: by calls leading a batch, or handed to one about to
        self.batches = 0  # batches run, and the calls they carried (for benchmarks and tests)
        self.calls = 0

    async def submit(self, item: Item) -> Outcome:
        """The outcome of `item`, run in a batch with the calls that arrive with it."""
        call: _Call[Item, Outcome] = _Call(item)
        self._queue.append(call)
        if self._in_flight < self.max_in_flight:
            self._in_flight += 1
            call.leads = True
        while not call.finished:
            if call.leads:
                await self._lead(call)
                continue
            call.woken = anyio.Event()
            try:
                await call.woken.wait()
            except BaseException:  # cancelled while queued: leave the queue, pass on a slot handed to us
                if not call.taken:
                    self._queue.remove(call)
                    if call.leads:
                        self._release_slot()
                raise
        if call.error is not None:
            raise call.error
        return call.outcome  # type: ignore[return-value]  # set whenever error is not

    async def _lead(self, call: _Call[Item, Outcome]) -> None:
        """Run batches from the queue's head until `call` has run (often another leader took it already),
        then hand the slot on."""
        try:
            await anyio.lowlevel.checkpoint()  # one loop turn: calls ready to be made join this batch
        except BaseException:
            if not call.taken:
                self._queue.remove(call)
            call.leads = False
            self._release_slot()
            raise
        while not call.taken:
            # Calls that arrived together are shared among the free slots, each share a batch of its own
            # running beside this one (on as many server backends), rather than queueing behind it.
            free = self.max_in_flight - self._in_flight
            leaders = sum(1 for queued in self._queue if queued.leads)  # this one, and any about to lead
            share = max(-(-len(self._queue) // (free + leaders)), self.min_share)
            size = min(self.max_batch, share, len(self._queue))
            batch = [self._queue.popleft() for _ in range(size)]
            while free > 0 and self._open_slot():
                free -= 1
            await self._run(batch)
        call.leads = False
        self._release_slot()

    async def _run(self, batch: list[_Call[Item, Outcome]]) -> None:
        for call in batch:
            call.taken = True
        self.batches += 1
        self.calls += len(batch)
        try:
            with anyio.CancelScope(shield=True):
                outcomes = await self._run_batch([call.item for call in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} calls got {len(outcomes)} outcomes")
            for call, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    call.error = outcome
                else:
                    call.outcome = outcome
        except BaseException as error:  # the batch as a whole failed: every call in it gets the error
            for call in batch:
                call.error = error
            if not isinstance(error, Exception):
                raise
        finally:
            for call in batch:
                call.finished = True
                call.wake()

    def _release_slot(self) -> None:
        """Hand the slot to the first queued call that holds none, or free it."""
        successor = self._next_leader()
        if successor is None:
            self._in_flight -= 1
            return
        successor.leads = True
        successor.wake()

    def _open_slot(self) -> bool:
        """Give a free slot to the first queued call that holds none; False when there is none."""
        successor = self._next_leader()
        if successor is None:
            return False
        self._in_flight += 1
        successor.leads = True
        successor.wake()
        return True

    def _next_leader(self) -> _Call[Item, Outcome] | None:
        return next((call for call in self._queue if not call.leads and not call.taken), None)
