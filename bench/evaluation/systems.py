"""The systems of the comparison, each run on a workload and measured the same way.

CPU: the whole model in one process (LocalEngine). GPU: the whole model on the backbone's device (`remoe up`
with no expert services; without a GPU that device is this CPU, priced as GPU memory). MIX: `remoe up`, every
expert on the expert services, no functions. Remoe: `remoe up` with the profile, predictor and scheduler.
Remoe-oracle: the same with the request's own prefill activation as the forecast. Fetch (idealised offloading,
perfect prefetch) cannot be run: it is modelled from the same profile. Every cost is memory x time at one price
table: Remoe's from its metering ledger, the others by the same formula from the scheduler's memory model.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench.evaluation.resident import HeldMemory, ResidentSampler
from bench.evaluation.workloads import Workload
from remoe.cluster import LocalCluster
from remoe.scheduler.baselines import SYSTEMS as MODELLED
from remoe.scheduler.estimate import Tokens
from remoe.scheduler.problem import Limits, Prices, Profile
from remoe.scheduler.shape import ModelShape
from remoe.sdk import Client


@dataclass
class Result:
    """One request on one system."""

    system: str
    workload: str
    index: int
    n_in: int
    n_out: int
    ttft_s: float
    tpot_s: float
    cost: float
    started_s: float = 0.0  # when it was sent, from the workload's start
    forecast_js: float | None = None
    function_s: float = 0.0  # function seconds billed to it (the handlers' time on its batches)
    function_round_trip_s: float | None = None  # the same batches' round trips as the backbone saw them
    function_calls: float = 0.0  # function invocations billed to it (its share of shared batches)
    modelled: bool = False
    predict_s: float = 0.0  # the gateway's forecast and plan before the backbone started (inside ttft_s)
    plan_s: float = 0.0
    predicted_cost: float | None = None  # the cost model's $ (Remoe: the plan's, from the ledger)
    # Remoe's bill and the plan's prediction in parts, from the ledger (None for the other systems): the main
    # model's $ (the rest of `cost` is the functions'), its busy seconds, and the plan's TTFT and TPOT beside the
    # backbone's measured ones.
    cost_main: float | None = None
    predicted_cost_main: float | None = None
    main_s: float | None = None
    predicted_ttft_s: float | None = None
    predicted_tpot_s: float | None = None
    backbone_ttft_s: float | None = None
    backbone_tpot_s: float | None = None
    # The functions' sizes from the ledger: MB x seconds over the functions billed to it (billed size = this /
    # function_s) and the sizes its plan gave its remote layers (a bill above the prediction: memory or time?)
    function_mb_s: float | None = None
    planned_function_mb: list[int] | None = None

    @property
    def busy_s(self) -> float:
        return self.ttft_s + max(0, self.n_out - 1) * self.tpot_s


@dataclass
class Run:
    """A system on a workload: its requests, expert cache counters and resident expert bytes over time."""

    system: str
    workload: str
    results: list[Result]
    hits: int = 0
    loads: int = 0
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)  # (s, service B, function B, warm)
    cold_starts: int = 0
    cold_fallbacks: int = 0  # batches computed on an expert service while their function started
    held_gb_s: float = 0.0  # function memory held (instances starting or warm) while it ran
    held_at_end_mb: int = 0  # function memory still held at its end (held one TTL more, unless reused)
    resident: HeldMemory | None = None  # what every process of the system held, sampled from /proc
    held_cost: float | None = None  # per request: GB-s held (each page once) at each memory's price
    held_rss_cost: float | None = None  # the same from the processes' summed RSS (a shared page once per process)

    @property
    def hit_rate(self) -> float | None:
        return self.hits / (self.hits + self.loads) if self.hits + self.loads else None

    def price_resident(self, prices: Prices) -> None:
        if self.resident is not None and self.results:
            self.held_cost = held_cost(self.system, self.resident, len(self.results), prices)
            self.held_rss_cost = held_cost(self.system, self.resident.as_rss_sum(), len(self.results), prices)


def held_cost(system: str, held: HeldMemory, requests: int, prices: Prices) -> float:
    """Per request: what the system's processes held over the workload at each memory's price. The backbone
    process is the GPU part wherever there is one (GPU, MIX, Remoe); the rest is CPU memory."""
    gpu = {"backbone"} if system != "CPU" else set()
    return held.cost(gpu, prices.cpu_gb_s, prices.gpu_gb_s) / requests


@dataclass
class Setting:
    """What every system of one model shares."""

    model: Path
    shape: ModelShape
    profile: Profile
    profile_path: Path
    prices: Prices
    slo_ttft_s: float = 0.0
    slo_tpot_s: float = 0.0
    function_ttl_s: float = 60.0
    run_dir: Path = Path("/tmp")
    warm_prompts: list[str] = field(default_factory=list)  # recorded into the predictor before measuring


def modelled_cost(setting: Setting, system: str, frequency, n_in: int, n_out: int, busy_s: float) -> float:
    """busy seconds x the system's main memory (the scheduler's model of it) x the price table."""
    request = setting.shape.request(frequency, n_in, n_out)
    est = MODELLED[system](request, setting.profile, setting.prices, Limits(), Tokens.of(request))
    return busy_s * (est.gpu_gb * setting.prices.gpu_gb_s + est.cpu_gb * setting.prices.cpu_gb_s)


def fetch(setting: Setting, workload: Workload, frequencies: dict[str, np.ndarray], n_ins: list[int]) -> Run:
    """Idealised offloading, modelled per request with the request's real activation."""
    results = []
    for i, (r, n_in) in enumerate(zip(workload.requests, n_ins, strict=True)):
        request = setting.shape.request(frequencies[r.prompt], n_in, r.new_tokens)
        est = MODELLED["Fetch"](request, setting.profile, setting.prices, Limits(), Tokens.of(request))
        results.append(
            Result("Fetch", workload.name, i, n_in, r.new_tokens, est.ttft_s, est.tpot_s, est.cost, modelled=True)
        )
    return Run("Fetch", workload.name, results)


def cpu(setting: Setting, workload: Workload, engine) -> Run:
    """The whole model in this process, requests one after another (a CPU function serves one at a time)."""
    before = engine.executor.stats
    hits0, loads0 = before.hits, before.loads
    sampler = ResidentSampler({"bench process (LocalEngine)": os.getpid()}).begin()  # the bench's bytes included
    results, start = [], time.monotonic()
    for i, r in enumerate(workload.requests):
        if workload.concurrent and r.arrival_s is not None:
            time.sleep(max(0.0, start + r.arrival_s - time.monotonic()))
        sent = time.monotonic() - start
        out = engine.generate(prompt=r.prompt, max_new_tokens=r.new_tokens, stop_on_eos=False)
        n_out = len(out.token_ids)
        cost = modelled_cost(setting, "CPU", None, out.prompt_tokens, n_out, out.ttft_s + (n_out - 1) * out.tpot_s)
        results.append(Result("CPU", workload.name, i, out.prompt_tokens, n_out, out.ttft_s, out.tpot_s, cost, sent))
    stats = engine.executor.stats
    run = Run("CPU", workload.name, results, stats.hits - hits0, stats.loads - loads0, resident=sampler.finish())
    run.price_resident(setting.prices)
    return run


class Sampler(threading.Thread):
    """Polls the cluster's status: expert bytes resident on the services and in warm functions, cache counters."""

    def __init__(self, client: Client, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.client, self.period_s = client, period_s
        self.stop_event = threading.Event()
        self.timeline: list[tuple[float, int, int, int]] = []
        self.counters: dict[str, tuple[int, int]] = {}  # destination -> (hits, loads), latest seen
        self.cold_starts: dict[str, int] = {}
        self.cold_fallbacks = 0
        self.held_mb: list[tuple[float, int]] = []  # (s, MB held by function instances starting or warm)
        self.functions_seen: set[str] = set()  # function names the backbone ever listed

    def held_gb_s(self) -> float:
        """GB-seconds of function memory held over the samples (trapezoids: what a platform holds, idle or not)."""
        pts = self.held_mb
        return sum((t1 - t0) * (a + b) / 2 for (t0, a), (t1, b) in zip(pts, pts[1:], strict=False)) / 1024

    def _function_stats(self, address: str):
        from remoe.proto import expert_pb2, expert_pb2_grpc

        with grpc.insecure_channel(address) as channel:
            return expert_pb2_grpc.ExpertServiceStub(channel).Stats(expert_pb2.StatsRequest(), timeout=2)

    def sample(self, t: float) -> None:
        backbone = self.client.status().backbone
        self.cold_fallbacks = backbone.function_cold_fallbacks
        services = 0
        for d in backbone.destinations:
            if d.healthy and d.stats.kind != "function":
                services += d.stats.resident_bytes
                self.counters[d.address] = (d.stats.hits, d.stats.loads)
        functions, warm = 0, 0
        self.held_mb.append((t, sum(f.memory_mb for f in backbone.functions if f.state in ("starting", "warm"))))
        self.functions_seen.update(f.function for f in backbone.functions)
        for f in backbone.functions:
            self.cold_starts[f"{f.function}/{f.replica}"] = f.cold_starts
            if f.state != "warm" or not f.address:
                continue
            try:
                stats = self._function_stats(f.address)
            except grpc.RpcError:
                continue  # it scaled to zero between the status and the call
            functions += stats.resident_bytes
            warm += 1
            self.counters[f"{f.function}/{f.replica}/{f.cold_starts}"] = (stats.hits, stats.loads)
        self.timeline.append((t, services, functions, warm))

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self.sample(time.monotonic() - start)
            except grpc.RpcError:
                pass
            self.stop_event.wait(self.period_s)

    def totals(self) -> tuple[int, int]:
        return sum(h for h, _ in self.counters.values()), sum(n for _, n in self.counters.values())


def cluster_kwargs(system: str, setting: Setting, oracle_address: str | None) -> dict:
    common = {"port": 0, "function_ttl_s": setting.function_ttl_s}
    if system == "MIX":
        return {**common, "predictor": False, "scheduler": False}
    if system == "GPU":
        return {**common, "expert_services": 0, "predictor": False, "scheduler": False}
    planned = {
        **common,
        "profile": setting.profile_path,
        "slo_ttft_ms": setting.slo_ttft_s * 1e3,
        "slo_tpot_ms": setting.slo_tpot_s * 1e3,
    }
    if system == "Remoe-oracle":
        return {**planned, "predictor_address": oracle_address}
    return planned


def serve(system: str, setting: Setting, workloads: list[Workload], oracle_address: str | None = None) -> list[Run]:
    """One cluster for the system; each workload in turn on it (the predictor learns across them)."""
    from remoe.scheduler.ledger import Ledger

    runs = []
    run_dir = setting.run_dir / system
    with LocalCluster(setting.model, run_dir=run_dir, **cluster_kwargs(system, setting, oracle_address)) as cluster:
        with Client(cluster.address, timeout=600) as client:
            # Not measured: the predictor's history (training prompts, prefill only) and the first-use loads.
            for j, prompt in enumerate(setting.warm_prompts):
                client.generate(prompt=prompt, max_new_tokens=1, request_id=f"warm-{system}-{j}")
            roots = {s.name: s.process.pid for s in cluster.services if s.process is not None}
            for workload in workloads:
                runs.append(_serve_workload(system, setting, workload, client, roots))
        if system.startswith("Remoe"):  # planned: the gateway metered every request into the ledger
            if not cluster.redis_url:
                raise RuntimeError("the metering ledger needs redis-server (apt-get install redis-server)")
            time.sleep(1.0)  # the gateway appends after the last token
            metered = {r.request_id: r for r in Ledger(cluster.redis_url).read()}
            for run in runs:
                for res in run.results:
                    record = metered.get(f"{system}-{run.workload}-{res.index}")
                    if record is None:
                        raise RuntimeError(f"{system}: request {res.index} of {run.workload} was not metered")
                    res.cost = record.cost
                    res.predicted_cost = record.predicted_cost
                    res.cost_main, res.predicted_cost_main = record.cost_main, record.predicted_cost_main
                    res.main_s = record.main_s
                    res.predicted_ttft_s, res.predicted_tpot_s = record.predicted_ttft_s, record.predicted_tpot_s
                    res.backbone_ttft_s, res.backbone_tpot_s = record.measured_ttft_s, record.measured_tpot_s
                    res.function_mb_s = sum(f.memory_mb * f.seconds for f in record.functions.values())
                    res.planned_function_mb = record.planned_function_mb
    return runs


def _serve_workload(system: str, setting: Setting, workload: Workload, client: Client, roots: dict[str, int]) -> Run:
    sampler = Sampler(client)
    sampler.sample(0.0)
    resident = ResidentSampler(roots).begin()
    hits0, loads0 = sampler.totals()
    cold0, fallbacks0 = sum(sampler.cold_starts.values()), sampler.cold_fallbacks
    sampler.start()
    start = time.monotonic()

    def one(i: int) -> Result:
        r = workload.requests[i]
        if workload.concurrent and r.arrival_s is not None:
            time.sleep(max(0.0, start + r.arrival_s - time.monotonic()))
        sent = time.monotonic() - start
        out = client.generate(
            prompt=r.prompt, max_new_tokens=r.new_tokens, ignore_eos=True, request_id=f"{system}-{workload.name}-{i}"
        )
        u = out.usage  # latency as the client saw it: the gateway's predict and plan included, as the SLO means
        n_in, n_out = u.prompt_tokens, u.completion_tokens
        res = Result(system, workload.name, i, n_in, n_out, out.client_ttft_s, out.client_tpot_s, 0.0, sent)
        res.predict_s, res.plan_s = u.predict_s, u.plan_s
        res.function_s = float(sum(u.function_seconds.values()))
        res.function_round_trip_s = float(sum(u.function_round_trip_seconds.values()))
        res.function_calls = float(sum(u.function_calls.values()))
        res.forecast_js = u.forecast_js if u.forecast_source else None
        if system in ("MIX", "GPU"):
            res.cost = modelled_cost(setting, system, None, res.n_in, res.n_out, res.busy_s)
        return res

    if workload.concurrent:
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(one, range(len(workload.requests))))
    else:
        results = [one(i) for i in range(len(workload.requests))]
    if workload.concurrent:  # watch the idle tail too: functions should scale to zero after their TTL
        time.sleep(setting.function_ttl_s + 2.0)
    sampler.stop_event.set()
    sampler.join()
    sampler.sample(time.monotonic() - start)
    held = resident.finish()
    hits, loads = sampler.totals()
    cold_starts = sum(sampler.cold_starts.values()) - cold0
    run = Run(
        system,
        workload.name,
        results,
        hits - hits0,
        loads - loads0,
        sampler.timeline,
        cold_starts,
        sampler.cold_fallbacks - fallbacks0,
        sampler.held_gb_s(),
        sampler.held_mb[-1][1] if sampler.held_mb else 0,
        held,
    )
    run.price_resident(setting.prices)
    return run


class OraclePredictor:
    """Answers Predict with the prompt's own prefill activation (measured beforehand); records nothing."""

    def __init__(self, frequencies: dict[str, np.ndarray], shape: tuple[int, int]) -> None:
        self.frequencies, self.shape = frequencies, shape

    def predict(self, prompt: str, token_ids: list[int]):
        from remoe.predictor.predictor import Forecast

        frequency = self.frequencies.get(prompt)
        if frequency is None:
            return Forecast(np.full(self.shape, 1.0 / self.shape[1]), 0.0, "equal")
        return Forecast(frequency, 1.0, "oracle")

    def record(self, prompt: str, token_ids: list[int], activation) -> None:
        pass


def start_oracle(model: Path, frequencies: dict[str, np.ndarray]):
    """A real PredictorService on a free port serving the oracle; returns (server, address)."""
    from remoe.checkpoint.weights import open_weights
    from remoe.proto import predictor_pb2, predictor_pb2_grpc
    from remoe.server.common import Server
    from remoe.services.predictor import PredictorServicer

    arch = open_weights(model).arch
    oracle = OraclePredictor(frequencies, (len(arch.layer_indices), arch.num_experts))
    server = Server("oracle", "127.0.0.1", 0, workers=8)
    servicer = PredictorServicer(oracle, arch.layer_indices, arch.num_experts, arch.top_k)
    predictor_pb2_grpc.add_PredictorServiceServicer_to_server(servicer, server.server)
    server.add(predictor_pb2.DESCRIPTOR.services_by_name["PredictorService"].full_name)
    port = server.start()
    return server, f"127.0.0.1:{port}"


def prefill_frequencies(engine, prompts: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Each prompt's actual prefill activation, rows normalised ([L, E]), and its token count."""
    frequencies, n_in = {}, {}
    for prompt in dict.fromkeys(prompts):
        out = engine.generate(prompt=prompt, max_new_tokens=1)
        counts = np.asarray(out.activations.prefill, dtype=np.float64)
        frequencies[prompt] = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        n_in[prompt] = out.prompt_tokens
    return frequencies, n_in
