"""With Redis unreachable a canary routes everything to the stable version
and asks Redis again only once per interval, so requests are not held up."""

from prometheus_client import REGISTRY

from headrace.local.redis_server import free_port
from headrace.runtime.routing_settings import CanarySettings
from services.router.routing.arm_stats import ArmStatsStore
from services.router.routing.canary import CanaryController
from services.router.routing.decision import Choice, RoutingRequest
from services.router.routing.layer import routing_redis
from services.router.routing.policies.canary import CanaryPolicy


def errors() -> float:
    return REGISTRY.get_sample_value("headrace_router_routing_state_errors_total", {"op": "canary_read"}) or 0.0


async def test_an_unreadable_state_routes_to_stable_and_is_not_asked_for_every_request() -> None:
    redis = routing_redis(f"redis://127.0.0.1:{free_port()}/0")
    controller = CanaryController(
        "m", "1", CanarySettings(version="2", steps=[50]), redis, ArmStatsStore(redis), state_ttl_s=0.1
    )
    policy = CanaryPolicy(controller)
    before = errors()
    for i in range(20):
        request = RoutingRequest(request_id=str(i), tenant="t", model="m", text="hi", user=f"u{i}")
        choice = await policy.choose(request, Choice(target="m", reasons=("default",)))
        assert (choice.target, choice.reasons, choice.observers) == ("m", ("default",), ())
    assert errors() - before == 1
    await redis.aclose()
