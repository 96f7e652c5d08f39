"""gRPC server plumbing every Remoe server shares (the services and the serverless expert function): a server with
health checks and graceful stop, logging, OpenTelemetry context on the wire. Nothing here knows a model."""
