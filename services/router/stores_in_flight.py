"""Answers on their way to the cache, by request. A store runs off the
request's path (the client has its answer before the cache has it), so the
same question asked again at once would miss and be generated again. A
lookup for a request whose answer this router is storing waits for that
store first (at most a bound), then hits.

Only this router's stores are known here: behind several routers the
window stays open for a question that comes back through another one."""

from __future__ import annotations

import asyncio

from headrace.v1 import generation_pb2


def request_identity(tenant: str, request: generation_pb2.GenerateRequest) -> bytes:
    """What makes two requests the same question: the tenant, the model
    asked for, the prompt or messages, and the sampling (not the session,
    user, priority, tags or cache policy, which do not change the answer)."""
    question = generation_pb2.GenerateRequest(
        model=request.model, prompt=request.prompt, messages=request.messages, sampling=request.sampling
    )
    return tenant.encode() + b"\0" + question.SerializeToString(deterministic=True)


class StoresInFlight:
    def __init__(self) -> None:
        # Per identity, the stores of it not finished (a hot question can be
        # answered twice before its first store lands).
        self._pending: dict[bytes, set[asyncio.Future[None]]] = {}

    def __bool__(self) -> bool:
        """Whether any store is under way."""
        return bool(self._pending)

    def begin(self, identity: bytes) -> asyncio.Future[None]:
        """Marks a store as started; call finish(identity, its future) when
        it ends, however it ends. Synchronous, so that a store is known
        before the stream it belongs to ends."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(identity, set()).add(done)
        return done

    def finish(self, identity: bytes, done: asyncio.Future[None]) -> None:
        if not done.done():
            done.set_result(None)
        stores = self._pending.get(identity)
        if stores is not None:
            stores.discard(done)
            if not stores:
                del self._pending[identity]

    async def settled(self, identity: bytes, timeout_s: float) -> bool:
        """Waits (at most timeout_s) for the stores of this identity under
        way now; False if one is still under way when the time is up. The
        stores go on either way: asyncio.wait cancels nothing."""
        stores = self._pending.get(identity)
        if not stores:
            return True
        _done, pending = await asyncio.wait(set(stores), timeout=timeout_s)
        return not pending
