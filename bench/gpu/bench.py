"""The backbone on a real GPU: a DeepSeek-V2-Lite-shaped random-init model in bf16, three ways, one run.

1. transformers: the whole model on the GPU (`generate`, greedy).
2. MIX: Remoe's backbone on the GPU, every routed expert on this machine's CPU in the same process.
3. Remoe: the backbone service on the GPU, the routed experts in CPU expert-service processes on the
   same machine, over real gRPC, driven through the SDK (`LocalCluster`, as `remoe up` starts it).

Each is warmed up once on the same prompt (so every expert it needs is loaded) and then timed: TTFT,
TPOT, and the GPU memory it holds. Results go to OUT/gpu.json after every phase, so a run cut short
still reports what it finished. Run it through `bench/gpu/run.sh OUT`, which skips cleanly without a GPU.

Usage: python bench/gpu/bench.py --out DIR [--layers 27] [--prompt-tokens 128] [--new-tokens 32]
       python bench/gpu/bench.py --out DIR --small --device cpu   # a minute-long smoke test anywhere
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from remoe.cluster import LocalCluster  # noqa: E402
from remoe.model.engine import LocalEngine  # noqa: E402
from remoe.scheduler.shape import DEEPSEEK_V2_LITE  # noqa: E402
from remoe.sdk import Client  # noqa: E402

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {msg}", flush=True)


def deepseek_v2_lite_config(layers: int, small: bool) -> AutoConfig:
    """DeepSeek-V2-Lite's published config.json shape (15.7B parameters at 27 layers); `small` shrinks it."""
    fields = {**DEEPSEEK_V2_LITE, "num_hidden_layers": layers}
    if small:
        fields.update(
            vocab_size=1024,
            hidden_size=128,
            intermediate_size=256,
            moe_intermediate_size=64,
            num_attention_heads=8,
            num_key_value_heads=8,
            n_routed_experts=8,
            num_experts_per_tok=2,
            kv_lora_rank=64,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            bos_token_id=0,
            eos_token_id=1,
        )
    return AutoConfig.for_model("deepseek_v2", **fields)


class Results:
    """gpu.json, rewritten after every phase."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.path = out / "gpu.json"
        self.data = {**meta, "systems": {}, "phases_s": {}}
        self.write()

    def phase(self, name: str, seconds: float) -> None:
        self.data["phases_s"][name] = round(seconds, 1)
        self.write()

    def system(self, name: str, row: dict) -> None:
        self.data["systems"][name] = row
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - T0, 1)
        self.path.write_text(json.dumps(self.data, indent=2))
        self.path.with_suffix(".md").write_text(render_markdown(self.data))


def _gb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f}"


def render_markdown(data: dict) -> str:
    """gpu.md: the table a reader wants from gpu.json."""
    if "skipped" in data and "systems" not in data:
        return f"# GPU run\n\nNo results: {data['skipped']} ({data.get('date', '')}).\n"
    m = data["machine"]
    systems = data["systems"]
    base = next(iter(systems.values()), None)
    lines = [
        "# The backbone on a GPU (bench/gpu/run.sh)",
        "",
        f"{data['what']}: {data.get('parameters', 0) / 1e9:.2f}B parameters, {data['layers']} layers, "
        f"{data['routed_experts']} routed experts, top-{data['top_k']}; {data['prompt_tokens']} prompt tokens, "
        f"{data['new_tokens']} new tokens; median of the timed runs after one warm-up.",
        "",
        f"Machine: {m.get('gpu', 'no GPU')}, {m['cpu']}, torch {m['torch']}, Python {m['python']}; "
        f"{data['date']}. All rows from one run.",
        "",
        "| system | TTFT (ms) | TPOT (ms) | TPOT vs whole model on GPU | first-run TTFT (ms) "
        "| GPU memory for weights (GB) | tokens equal to transformers |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in systems.items():
        gpu = row.get("gpu_bytes_weights")
        if gpu is None and row.get("gpu_mib_backbone_process") is not None:
            gpu_text = f"{row['gpu_mib_backbone_process'] * 2**20 / 1e9:.2f} (whole process, CUDA context included)"
        else:
            gpu_text = _gb(gpu)
        ratio = f"{row['tpot_ms'] / base['tpot_ms']:.2f}x" if base else ""
        equal = row.get("tokens_equal_transformers", len(row["tokens"]))
        lines.append(
            f"| {name} | {row['ttft_ms']} | {row['tpot_ms']} | {ratio} | {row.get('cold_ttft_ms', 'n/a')} "
            f"| {gpu_text} | {equal} of {len(row['tokens'])} |"
        )
    lines += [
        "",
        "First-run TTFT includes loading every expert the prompt routes to (lazily, from the safetensors files).",
        "Tokens: greedy ids equal to transformers' up to the first difference. bf16 sums differ between the CPU",
        "and GPU kernels, and a random-init model's logits are nearly tied, so greedy paths part after a while;",
        "float32 equality (same ids, logits within 1e-4) is what the test suite checks, on the CPU.",
        "",
        "Phases (s): " + ", ".join(f"{k} {v}" for k, v in data["phases_s"].items()) + ".",
    ]
    for name, row in systems.items():
        if "cpu_expert_bytes_loaded" in row:
            lines.append(f"\n{name}: {_gb(row['cpu_expert_bytes_loaded'])} GB of expert weights loaded on the CPU.")
        for i, rss in enumerate(row.get("cpu_rss_expert_services", [])):
            lines.append(
                f"\n{name}: expert service {i} resident memory {_gb(rss.get('RssAnon'))} GB anonymous + "
                f"{_gb(rss.get('RssFile'))} GB file-backed (expert tensors read from the mmapped safetensors "
                "without a dtype change stay file-backed pages, shared with the page cache)."
            )
    if "skipped" in data:
        lines.append(f"\nSkipped: {data['skipped']}.")
    return "\n".join(lines) + "\n"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_stream(make_stream: Callable[[], object]) -> tuple[float, float, list[int]]:
    """(TTFT ms, TPOT ms, tokens) of one streamed generation; the stream yields token id lists."""
    start = time.perf_counter()
    times, tokens = [], []
    for ids in make_stream():
        times.append(time.perf_counter())
        tokens += ids
    return (times[0] - start) * 1e3, (times[-1] - times[0]) / max(1, len(times) - 1) * 1e3, tokens


def measure(run: Callable[[], tuple[float, float, list[int]]], repeats: int) -> dict:
    cold = run()  # warm-up: loads every expert this prompt needs, compiles/caches kernels
    samples = [run() for _ in range(repeats)]
    return {
        "cold_ttft_ms": round(cold[0], 2),
        "ttft_ms": round(statistics.median(s[0] for s in samples), 2),
        "tpot_ms": round(statistics.median(s[1] for s in samples), 2),
        "tokens": samples[-1][2],
    }


class _TokenClock:
    """transformers' streamer: put() gets the prompt first, then each new token, stamped once the GPU is done."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self.tokens: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        _sync(self.device)
        self.times.append(time.perf_counter())
        self.tokens += value.flatten().tolist()

    def end(self) -> None:
        pass


def hf_run(model, ids: list[int], new_tokens: int, device: torch.device):
    def run() -> tuple[float, float, list[int]]:
        clock = _TokenClock(device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                torch.tensor([ids], device=device),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=clock,
            )
        t = clock.times
        return (t[0] - start) * 1e3, (t[-1] - t[0]) / max(1, len(t) - 1) * 1e3, clock.tokens

    return run


def gpu_bytes(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated() if device.type == "cuda" else None


def nvidia_smi_mib(pid: int) -> int | None:
    """GPU memory one process holds (CUDA context included), as nvidia-smi reports it."""
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return int(fields[1])
    return None


def rss_bytes(pid: int) -> dict[str, int]:
    """Resident memory split as the kernel counts it: anonymous (loaded expert tensors) vs file-backed (the
    mmapped safetensors pages the loads touched, shared with the page cache)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def matching_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def machine(device: torch.device) -> dict:
    names = [
        line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
    ]
    info = {
        "cpu": f"{names[0]} x {len(names)}" if names else platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/remoe-gpu"), help="where the checkpoint goes")
    parser.add_argument("--layers", type=int, default=27, help="DeepSeek-V2-Lite has 27 (default)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (median)")
    parser.add_argument("--expert-services", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny model of the same shape family (smoke test)")
    parser.add_argument("--budget-s", type=float, default=450, help="skip phases that would start after this")
    parser.add_argument("--render", type=Path, help="only rewrite the .md beside this gpu.json, then exit")
    args = parser.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(render_markdown(json.loads(args.render.read_text())))
        return

    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.workdir, ignore_errors=True)
    path = args.workdir / "model"
    dtype = torch.bfloat16
    config = deepseek_v2_lite_config(args.layers, args.small)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.prompt_tokens,), generator=g).tolist()
    results = Results(
        args.out,
        {
            "what": "DeepSeek-V2-Lite-shaped random-init model, bf16, batch 1, greedy, seeded random prompt ids",
            "machine": machine(device),
            "layers": args.layers,
            "routed_experts": config.n_routed_experts,
            "top_k": config.num_experts_per_tok,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "small": args.small,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
    )

    # 1. The whole model on the device, through transformers.
    start = time.monotonic()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    _sync(device)
    params = sum(p.numel() for p in model.parameters())
    weights_gpu = gpu_bytes(device)
    results.data["parameters"] = params
    results.phase("build_model", time.monotonic() - start)
    log(f"built {params / 1e9:.2f}B parameters on {device}")

    start = time.monotonic()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    row = measure(hf_run(model, ids, args.new_tokens, device), args.repeats)
    row["gpu_bytes_weights"] = weights_gpu
    row["gpu_bytes_peak"] = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    results.system("transformers (whole model on GPU)", row)
    reference = row["tokens"]
    results.phase("transformers", time.monotonic() - start)
    log(f"transformers: TTFT {row['ttft_ms']} ms, TPOT {row['tpot_ms']} ms")

    start = time.monotonic()
    model.save_pretrained(path, save_original_format=True)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    results.data["checkpoint_bytes"] = size
    results.phase("save_checkpoint", time.monotonic() - start)
    log(f"saved {size / 1e9:.1f} GB to {path}")

    # 2. MIX: backbone on the device, experts on this process's CPU.
    if time.monotonic() - T0 < args.budget_s:
        start = time.monotonic()
        engine = LocalEngine(path, device=device, dtype=dtype)
        backbone_gpu = gpu_bytes(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def mix():
            return time_stream(
                lambda: ([t] for t in engine.stream(token_ids=ids, max_new_tokens=args.new_tokens, stop_on_eos=False))
            )

        row = measure(mix, args.repeats)
        row["gpu_bytes_weights"] = backbone_gpu
        row["gpu_bytes_peak"] = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        row["cpu_expert_bytes_loaded"] = engine.executor.stats.bytes_loaded
        row["tokens_equal_transformers"] = matching_prefix(row["tokens"], reference)
        results.system("MIX (backbone on GPU, experts on its CPU)", row)
        results.phase("mix", time.monotonic() - start)
        log(f"MIX: TTFT {row['ttft_ms']} ms, TPOT {row['tpot_ms']} ms")
        del engine
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    else:
        results.data["skipped"] = "MIX and Remoe: over --budget-s"

    # 3. Remoe: backbone service on the device, experts in expert-service processes, through the SDK.
    if time.monotonic() - T0 < args.budget_s:
        start = time.monotonic()
        with LocalCluster(
            path,
            port=0,
            expert_services=args.expert_services,
            backbone_device=str(device),
            predictor=False,
            run_dir=args.workdir / "run",
        ) as cluster:
            client = Client(cluster.address, timeout=600)

            def remoe():
                return time_stream(
                    lambda: (
                        c.token_ids
                        for c in client.stream(token_ids=ids, max_new_tokens=args.new_tokens, ignore_eos=True)
                        if c.token_ids
                    )
                )

            row = measure(remoe, args.repeats)
            backbone_pid = cluster.by_name("backbone").process.pid
            row["gpu_mib_backbone_process"] = nvidia_smi_mib(backbone_pid)
            row["cpu_rss_expert_services"] = [
                rss_bytes(s.process.pid) for s in cluster.services if s.name.startswith("expert-")
            ]
            row["tokens_equal_transformers"] = matching_prefix(row["tokens"], reference)
            client.close()
        results.system(f"Remoe (backbone service on GPU, {args.expert_services} CPU expert services, gRPC)", row)
        results.phase("remoe", time.monotonic() - start)
        log(f"Remoe: TTFT {row['ttft_ms']} ms, TPOT {row['tpot_ms']} ms")
    shutil.rmtree(args.workdir, ignore_errors=True)
    results.write()
    log(f"wrote {results.path}")


if __name__ == "__main__":
    main()
