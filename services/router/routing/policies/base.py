"""The one signature every routing policy has. A policy looks at the
request and the choice made so far (a target and why) and returns the
next choice: the same target, or another with a reason token added, maybe
with an observer that wants to hear how the request went. Policies are
composed per alias by applying them in order (registry.py); a canary
applies where a target names a model without a version.

tests/unit/router/routing/test_policy_protocol.py runs every policy kind
through the same checks."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from services.router.routing.decision import Choice, RoutingRequest


@runtime_checkable
class RoutingPolicy(Protocol):
    # "<kind>:<what it applies to>", e.g. "fast_accurate:chat", "ab:chat-exp", "canary:smollm2".
    name: str

    async def choose(self, request: RoutingRequest, choice: Choice) -> Choice: ...
