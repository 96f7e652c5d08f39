"""Import a service now, run it once its settings are known:

    python -m remoe.services.deferred_start remoe.services.backbone SETTINGS.json

LocalCluster spawns the backbone and the gateway this way at launch, so their imports (seconds each) run while
the services they need start, instead of after them; it writes SETTINGS.json (`{"env": {...}}`: the service's
REMOE_* settings, with the addresses it talks to) once those services serve. The wait is a step of the
service's startup record ("wait for the services it needs"). Exits if its starter is gone before that.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

from remoe.server import startup

WAIT_STEP = "wait for the services it needs"


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    module_name, settings = sys.argv[1], Path(sys.argv[2])
    parent = os.getppid()
    service = importlib.import_module(module_name)  # the slow part: torch, transformers, grpc, ...
    startup.begin()
    with startup.step(WAIT_STEP):
        while not settings.is_file():
            if os.getppid() != parent:
                raise SystemExit(f"{module_name}: its starter exited before sending its settings")
            time.sleep(0.01)
    os.environ.update(json.loads(settings.read_text())["env"])
    service.main([])


if __name__ == "__main__":
    main()
