"""Regenerate the Python stubs in remoe/proto/ from protos/remoe/v1/*.proto.

`python -m remoe.proto.generate` rewrites them; `--check` only says whether they are fresh (CI runs it
through the test suite). Generated code matches the pinned grpcio-tools/protobuf.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
OUT_DIR = Path(__file__).resolve().parent
_IMPORT = re.compile(r"^from remoe\.v1 import (\w+_pb2)", re.MULTILINE)


def generate() -> dict[str, str]:
    """Run protoc into a temp dir; return {file name: source} with imports made package-relative."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "remoe" / "v1").glob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}"]
        if protoc.main([*args, *protos]) != 0:
            raise SystemExit("protoc failed")
        out = {}
        for path in sorted((Path(tmp) / "remoe" / "v1").glob("*.py")):
            out[path.name] = _IMPORT.sub(r"from remoe.proto import \1", path.read_text())
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are stale")
    args = parser.parse_args()
    fresh = generate()
    stale = [n for n, src in fresh.items() if not (OUT_DIR / n).is_file() or (OUT_DIR / n).read_text() != src]
    if args.check:
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run `make protos`", file=sys.stderr)
            return 1
        return 0
    for name in stale:
        (OUT_DIR / name).write_text(fresh[name])
    print(f"regenerated {len(stale)} of {len(fresh)} stub files in {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
