"""The gateway's OpenAI-compatible HTTP API (FastAPI): completions, chat completions, models, health, metrics.

Every request is served by the gateway's own GatewayCore (remoe/gateway/, in this process), as the gRPC SDK's
are: the same admission control, forecast, plan, metering and stop strings.
"""

from remoe.openai_api.app import create_app
from remoe.openai_api.server import HttpServer

__all__ = ["HttpServer", "create_app"]
