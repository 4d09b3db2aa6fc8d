"""Pipeline stages in threads: a producer that feeds a bounded queue, and `prefetched`, an iterator advanced in a
thread of its own. PyAV, x264, OpenCV and LiteRT release the GIL, so stages in threads run on separate cores."""

from __future__ import annotations

import queue
import threading

DONE = object()  # the last item a producer puts on its queue


def producer(iterable, q: queue.Queue, errors: list, stop: threading.Event) -> None:
    """Feeds `q` from `iterable` in a thread; always ends with DONE (the consumer drains until it sees it). An
    exception is appended to `errors` for the consumer to raise; `stop` set ends it early."""
    try:
        for item in iterable:
            if stop.is_set():
                break
            q.put(item)
    except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
        errors.append(e)
    finally:
        q.put(DONE)


def prefetched(iterable, size: int = 4):
    """The items of `iterable`, produced in a thread of its own up to `size` ahead: e.g. decoding the next frames
    while this thread segments the current one. An exception there is raised here, at the item where it happened.

    Example:
        >>> list(prefetched(range(5)))
        [0, 1, 2, 3, 4]
    """
    q: queue.Queue = queue.Queue(maxsize=size)
    errors: list = []
    stop = threading.Event()
    thread = threading.Thread(target=producer, args=(iterable, q, errors, stop), daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not DONE:
            yield item
        if errors:
            raise errors[0]
    finally:  # also when the consumer stops early: the producer is told to stop and unblocked
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
