"""The host allocator policy of the gradient passes (`slice_trl.models.gradients`): glibc's mmap
threshold, set through ctypes for the duration of the passes on CPU."""

from __future__ import annotations

import contextlib
import ctypes
import functools

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_PROBE_MMAP_THRESHOLD = 128 * 1024
_RESTORED_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for its dynamic threshold (64-bit)


@functools.lru_cache(maxsize=1)
def _mallopt():
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to do
        return None


@contextlib.contextmanager
def host_memory_returned_to_os(enabled: bool = True):
    """During the gradient passes on CPU, let glibc serve every allocation >= 128 KiB with mmap,
    so that freed activation and gradient buffers go back to the OS at once.

    Why: with glibc's default (a dynamic threshold that climbs to 32 MiB) the many short-lived
    buffers of each forward/backward are carved from the heap, and fragmentation keeps them
    resident: the probe's RSS peaked ~0.2x the target weights above its live memory (G_prev +
    G_cur + one micro-batch's activations; benchmarks/results/init_benchmark.md). Trimming the
    heap between passes (malloc_trim) does not help, since the growth happens within a pass.
    Afterwards the threshold is set to 32 MiB, the value the dynamic rule settles at once large
    blocks have been freed. A no-op without glibc or when ``enabled`` is false (accelerators:
    their memory is not the host heap)."""
    mallopt = _mallopt() if enabled else None
    if mallopt is None:
        yield
        return
    mallopt(M_MMAP_THRESHOLD, _PROBE_MMAP_THRESHOLD)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, _RESTORED_MMAP_THRESHOLD)
