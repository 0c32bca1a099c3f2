"""The OpenAI-compatible HTTP gateway, served by the router process."""

from services.router.gateway.app import build_gateway_app
from services.router.gateway.dependencies import GatewayServices
from services.router.gateway.http_server import HttpServer

__all__ = ["GatewayServices", "HttpServer", "build_gateway_app"]
