"""The canary's routing side: a request that resolves to a model's default
version goes to the canary version with the step's share. The side is
sticky per user or session (the stable hash, salted with the run), so as
the share grows, callers already on the canary stay there."""

from __future__ import annotations

import random

from services.router.routing import metrics
from services.router.routing.canary import CanaryController, CanaryStatus
from services.router.routing.decision import Choice, RequestOutcome, RoutingRequest
from services.router.routing.stable_hash import unit_interval


class CanaryPolicy:
    def __init__(self, controller: CanaryController, *, rng: random.Random | None = None) -> None:
        self.name = f"canary:{controller.model}"
        self._controller = controller
        self._rng = rng or random.Random()

    async def choose(self, request: RoutingRequest, choice: Choice) -> Choice:
        base, _, version = choice.target.partition("@")
        # Only the model's default version is split; a pinned version is a
        # client's explicit wish.
        if version or base != self._controller.model:
            return choice
        state = await self._controller.state()
        if state is None or state.status is CanaryStatus.ROLLED_BACK:
            return choice
        if state.status is CanaryStatus.PROMOTED:
            return choice.to(self._controller.canary_model_version, "canary-promoted")
        key = request.user or request.session_id
        point = unit_interval("canary", self._controller.model, state.run, key) if key else self._rng.random()
        on_canary = point < self._controller.share(state)
        metrics.DECISIONS.labels(policy=self.name, choice="canary" if on_canary else "stable").inc()
        controller = self._controller

        async def observe(outcome: RequestOutcome) -> None:
            await controller.observe(state, outcome)

        if on_canary:
            return choice.to(controller.canary_model_version, "canary", observer=observe)
        return choice.to(controller.stable_model_version, "canary-stable", observer=observe)
