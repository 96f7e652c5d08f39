"""Remoe's packages form layers: each imports only from layers below it (and from itself), so there is no import
circle and a part can be read, tested and started without what sits above it. The table is the declaration; the
test reads every import statement under remoe/ (those inside functions too) and checks it against the table."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "remoe"

# Lowest first. A name is a package under remoe/ or a top-level module (remoe/NAME.py); "remoe" is the package's
# own __init__ (its lazy re-exports of the SDK and LocalEngine).
LAYERS: list[set[str]] = [
    {"errors", "ports", "machine", "constants", "proto"},  # leaves: import nothing of remoe
    {"transport", "settings"},  # the wire: tensor codec, streams, channels, request context; service settings
    {"server", "checkpoint", "sdk"},  # gRPC server plumbing; reading checkpoints; the client SDK
    {"experts"},  # expert math on hosted experts, the cache, placement, the expert servicer
    {"functions", "metrics"},  # the serverless expert function (expert code + wire + transport only)
    {"platform", "model"},  # where functions run; the backbone, generation, batching, LocalEngine
    {"dispatch", "predictor", "cluster"},  # the backbone's fan-out; SPS; `remoe up`'s processes
    {"scheduler", "corpus", "survey"},  # survey: every model type checked, through remoe up too
    {"gateway", "profiling"},  # GatewayCore (admission, planning, metering, learning); `remoe profile`
    {"openai_api"},  # the HTTP API over GatewayCore
    {"services"},  # runnable servers: thin layers over everything below, imported by nothing but the CLI
    {"cli", "probe", "remoe"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _part_of(module: str) -> str:
    """remoe.a.b -> "a"; remoe -> "remoe"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "remoe"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported remoe module) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "remoe"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "remoe":  # from remoe import sdk
                found += [(node.lineno, f"remoe.{a.name}") for a in node.names]
            elif node.module.startswith("remoe."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "." * node.level + (node.module or "")))  # relative: reported below
    return found


def _sources() -> list[Path]:
    generated = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
    return [p for p in sorted(ROOT.rglob("*.py")) if not p.name.endswith(generated)]


def test_every_part_of_remoe_has_a_layer():
    parts = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    parts |= {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"} | {"remoe"}
    assert parts == set(LAYER_OF), (
        f"not in the layer table: {sorted(parts - set(LAYER_OF))}; in the table but gone: "
        f"{sorted(set(LAYER_OF) - parts)}"
    )


def test_every_import_goes_down_the_layers():
    wrong = []
    for path in _sources():
        source = _part_of(_module_name(path))
        for line, target in _imports(path):
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            if target.startswith("."):
                wrong.append(f"{where}: relative import {target} (write the full remoe.* name)")
                continue
            part = _part_of(target)
            if part == source:
                continue
            if LAYER_OF[part] >= LAYER_OF[source]:
                wrong.append(f"{where}: {source} (layer {LAYER_OF[source]}) imports {target} (layer {LAYER_OF[part]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    """The check must not pass by missing the lazy imports a function makes at call time."""
    source = tmp_path / "remoe" / "transport" / "late.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from remoe.services.gateway import GatewayServicer\n")
    assert _imports(source) == [(2, "remoe.services.gateway")]
    assert LAYER_OF[_part_of("remoe.services.gateway")] > LAYER_OF["transport"]


def test_no_source_file_is_over_400_lines():
    """One concept a file: a module past 400 lines holds two (the generated gRPC stubs aside)."""
    long = {str(p.relative_to(ROOT.parent)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these: {long}"
