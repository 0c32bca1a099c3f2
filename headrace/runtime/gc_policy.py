"""The garbage collector in a long-running service.

What is alive once a service has started (modules, classes, protobuf
descriptors, pydantic models, a tokenizer: hundreds of thousands of
objects) stays alive for the process's life, yet every full (generation
2) collection of CPython walks all of it. Measured with a gc callback in
bench-batch on vLLM: the router paused 172 ms in one full collection
while serving (54 ms in another run), the batch consumer 40 ms, and the
worker's process 320-500 ms in the ones during its start; each pause
stalls every request the process is serving (an online request's first
token among them). gc.freeze() moves what is alive to a permanent
generation that collections skip, as vLLM's engine core does for its own
process; the young generations are collected as before, and reference
counting frees frozen objects as usual (only cycles among them stay).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Freeze every object alive now; call once, when a service has started
    (its model loaded, its server bound). It collects first, so that
    startup's garbage is not frozen with it. Returns how many objects are
    frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
