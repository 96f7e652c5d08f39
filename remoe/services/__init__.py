"""Runnable gRPC servers: `python -m remoe.services.{expert,backbone,gateway} --help`.

Each is a thin wrapper: it translates protos to calls into the library (remoe.model, remoe.experts).
"""
