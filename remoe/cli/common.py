"""What several `remoe` commands share: defaults from the settings classes, the flags that reach a gateway."""

from __future__ import annotations

import argparse

from remoe.errors import RemoeError
from remoe.ports import DEFAULT_PORTS
from remoe.settings import BackboneSettings, GatewaySettings, default_of

GATEWAY_ADDRESS = f"localhost:{DEFAULT_PORTS['gateway']}"


def gateway_default(field: str):
    """A gateway setting's default (the CLI's flags default to the services' own)."""
    return default_of(GatewaySettings, field)


def backbone_default(field: str):
    """A backbone setting's default."""
    return default_of(BackboneSettings, field)


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=GATEWAY_ADDRESS, help=f"gateway address (default {GATEWAY_ADDRESS})")
    p.add_argument("--token", default=None, help="bearer token of a gateway that asks for one (default: $REMOE_TOKEN)")
    p.add_argument("--tls", action="store_true", help="the gateway serves TLS (checked against the system's CAs)")
    p.add_argument("--tls-ca", default=None, metavar="PEM", help="the gateway serves TLS: trust this CA certificate")


def check_slos(args: argparse.Namespace) -> None:
    for flag in ("slo_ttft", "slo_tpot"):
        value = getattr(args, flag, None)
        if value is not None and not 0 < value < float("inf"):
            raise RemoeError(f"--{flag.replace('_', '-')} must be a positive number of ms, got {value}")
