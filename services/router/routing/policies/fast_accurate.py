"""Fast vs accurate: easy requests go to a cheap model, hard ones to a
strong one, by a difficulty score. With a cascade, a request sent to the
fast model carries a plan: if the fast answer fails the check, the flow
escalates it to the accurate model (and the client pays for both)."""

from __future__ import annotations

from headrace.runtime.routing_settings import FastAccuratePolicySettings
from services.router.routing import metrics
from services.router.routing.cascade import TextualAnswerCheck
from services.router.routing.decision import CascadePlan, Choice, RoutingRequest
from services.router.routing.policies.difficulty import DifficultyScorer


class FastAccuratePolicy:
    def __init__(self, route: str, settings: FastAccuratePolicySettings, scorer: DifficultyScorer) -> None:
        self.name = f"fast_accurate:{route}"
        self._route = route
        self._settings = settings
        self._scorer = scorer
        self._check = TextualAnswerCheck(settings.cascade) if settings.cascade is not None else None

    async def choose(self, request: RoutingRequest, choice: Choice) -> Choice:
        score = await self._scorer.score(request)
        hard = score >= self._settings.threshold
        path = "accurate" if hard else "fast"
        metrics.DECISIONS.labels(policy=self.name, choice=path).inc()
        chosen = choice.to(self._settings.accurate if hard else self._settings.fast, path).with_attribute(
            "headrace.route.difficulty", round(score, 4)
        )
        if hard or self._check is None or self._settings.cascade is None:
            return chosen
        plan = CascadePlan(
            route=self._route,
            check=self._check,
            escalate_to=self._settings.accurate,
            fast_max_tokens=self._settings.cascade.fast_max_tokens,
        )
        return Choice(
            target=chosen.target,
            reasons=chosen.reasons,
            observers=chosen.observers,
            cascade=plan,
            attributes=chosen.attributes,
        )
