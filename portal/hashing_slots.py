"""Hashing slots: how many Argon2id hashes one server runs at once, shared by its worker processes.

Server plumbing, not identity: gunicorn's hooks create and reclaim the slots
(``portal/gunicorn_config.py``), the hasher takes a turn in them (``portal/identity.py``), and
the error pages answer ``HashingBusy`` (``portal/errors.py``); all three import them from here.
"""

from __future__ import annotations

import multiprocessing
import threading


class HashingBusy(Exception):
    """Every hashing slot stayed taken for the whole wait: the portal is over capacity; retry later."""


MAX_SERVER_WORKERS = 1024  # worker processes one server's slot accounting can track (gunicorn refuses more)


class ServerSlots:
    """Hashing slots shared by every worker process of one server, so they follow the load.

    Created in the gunicorn master (``portal/gunicorn_config.py``) and inherited by each forked
    worker: ``count`` hashes run at once on the whole server, whichever workers hold the
    connections, so a worker that got every connection still hashes on every core while Argon2
    memory stays at ``count`` buffers. Each worker records what it holds under its own index, so
    the master can give back the slots of a worker that died holding them (``reclaim``).
    """

    def __init__(self, count: int, max_workers: int = MAX_SERVER_WORKERS) -> None:
        self.count = count
        self._free = multiprocessing.BoundedSemaphore(count)
        # No lock shared between processes: a worker killed while holding one would leave the master
        # waiting on it in ``reclaim``. Each worker writes only its own entry (its threads take
        # turns on a lock of its own), and the master reads an entry only once its worker is gone.
        self._held = multiprocessing.Array("i", max_workers, lock=False)
        self._own = threading.Lock()
        self.index = 0  # this worker's index, set after the fork (``bind``)

    def bind(self, index: int) -> None:
        self.index = index

    def acquire(self, timeout: float) -> bool:
        if not self._free.acquire(timeout=timeout):
            return False
        with self._own:
            self._held[self.index] += 1
        return True

    def release(self) -> None:
        with self._own:
            self._held[self.index] -= 1
        self._free.release()

    def reclaim(self, index: int) -> None:
        """In the master, when the worker at ``index`` exited: free whatever it still held."""
        lost, self._held[index] = self._held[index], 0
        for _ in range(lost):
            self._free.release()


_server_slots: ServerSlots | None = None


def share_hashing_slots(count: int) -> ServerSlots:
    """Called once in the server's master process, before the workers are forked."""
    global _server_slots
    _server_slots = ServerSlots(count)
    return _server_slots


def server_hashing_slots() -> ServerSlots | None:
    return _server_slots
