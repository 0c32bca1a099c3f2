"""What the gateway's routes are given: the router's own flows and
settings, passed in (no globals), called in-process."""

from __future__ import annotations

from dataclasses import dataclass

from headrace.models.registry import ModelRegistry
from headrace.runtime.config import Settings
from services.router.flow_protocols import Embedding, Generation
from services.router.gateway.streaming import RelayLimits


@dataclass(frozen=True)
class GatewayServices:
    """What the gateway's routes call: the router's own flows, in-process."""

    settings: Settings
    generation: Generation
    embedding: Embedding
    registry: ModelRegistry

    @property
    def relay_limits(self) -> RelayLimits:
        gateway = self.settings.gateway
        return RelayLimits(buffer=gateway.stream_buffer, stall_timeout_s=gateway.stall_timeout_s)
