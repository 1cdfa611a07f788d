"""Command encoders finished on a thread of their own (CONVROUTE_FINISH_ASIDE).

A compiled model encodes its next call's command buffer right after each submit, while the GPU runs (see
Recording). On a slow host that encoding outlasts the GPU pass: on the H100's host wgpu's `finish` took ~6 us
a dispatch and the pass loop ~4 (tools/host_phases.py), so the read-back waited for the host, not the GPU. Here
the calling thread records the pass and hands the encoder to one process-wide thread for `finish`, a single C
call that releases the GIL: the finish then overlaps the GPU's remainder, the read-back, the caller's own work
and the next upload. The next submit takes the result (`Finishing.command`), and an error raised by the finish
surfaces there, as it would have where the encoding ran.
"""

from __future__ import annotations

import atexit
import queue
import threading

_STOP = object()


class Finishing:
    """One encoder's finish, handed to the finisher thread; `command()` waits for it once."""

    __slots__ = ("_done",)

    def __init__(self):
        self._done = queue.SimpleQueue()

    def command(self):
        """The finished command buffer, or the finish's error raised here."""
        command, error = self._done.get()
        if error is not None:
            raise error
        return command


class Finisher:
    """The one thread that finishes encoders, started on first use."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def finish(self, encoder, checked) -> Finishing:
        """Finish `encoder` on the finisher thread, inside `checked` (Gpu.checked: wgpu errors -> GpuError)."""
        if self._thread is None:
            self._start()
        job = Finishing()
        self._jobs.put((encoder, checked, job))
        return job

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._serve, name="convroute-finisher", daemon=True)
                thread.start()
                atexit.register(self._stop, thread)
                self._thread = thread

    def _serve(self) -> None:
        while True:
            item = self._jobs.get()
            if item is _STOP:
                return
            encoder, checked, job = item
            try:
                with checked:
                    command = encoder.finish()
                job._done.put((command, None))
            except BaseException as err:  # noqa: BLE001 - handed to the thread that waits for the command
                job._done.put((None, err))

    def _stop(self, thread: threading.Thread) -> None:
        """At exit: let a finish in progress end before the interpreter (and wgpu's objects) go."""
        self._jobs.put(_STOP)
        thread.join(timeout=5.0)


FINISHER = Finisher()
