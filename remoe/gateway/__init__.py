"""The gateway as a library: `GatewayCore.generate(request, caller)` admits, validates, forecasts, plans, streams
from the backbone, meters and learns. The gRPC servicer (remoe/services/gateway.py) and the HTTP API
(remoe/openai_api/) are thin translations over it."""
