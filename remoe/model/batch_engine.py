"""Continuous batching: every active request's next token comes from one shared forward per step.

The requests' own threads take turns driving the batch: a caller waiting for its next token runs the next
step itself when no other caller is running one (so a lone request runs its own forwards, with no hand-off
between threads; measured faster here than a dedicated loop thread, whose hand-off cost a single client 10-40%
of its TPOT). A step (1) ends the requests that were cancelled or passed their deadline and admits waiting ones
(up to `max_requests` at once; the rest wait in arrival order), (2) decodes one token of every request past
its prompt and (3) spends up to `prefill_chunk` prompt tokens on the requests still prefilling, oldest first:
decode tokens and prompt chunks in one packed forward (`PackedStepCache`) when its attention stays small,
else the decode step (`StepCache` stacks the requests' own KV caches) and each chunk alone. A failed forward
ends the requests in it, with the error; the others go on. Each request's rows carry its plan, deadline,
billing and activation recorder (`RequestRows`), so a step's expert fan-out sends one message per destination
with every request's rows.

Billing: a forward's wall time is split over the requests in it by their tokens in it (a decode step: equal
shares), so the requests' `backbone_s` add up to the engine's busy time (`busy_s`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator

import torch
from opentelemetry import trace
from transformers import PreTrainedModel

from remoe.model.batch_request import (
    BatchObserver,
    BatchRequest,
    BatchSettings,
    DeadlinePassed,
    RequestCancelled,
    past_tokens,
)
from remoe.model.generation import make_generator, new_cache, sample_next
from remoe.model.logprobs import TokenLogprob, keep_top, token_logprobs
from remoe.model.step_cache import (
    PACKABLE_TYPES,
    PackedStepCache,
    StepCache,
    decode_masks,
    layer_types,
    packed_masks,
)
from remoe.transport.request_context import current_batch, current_deadline, current_request_id

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


_END = object()
# A packed step's attention scores (queries x every request's keys) above this: decode and prefill run apart.
MAX_PACKED_SCORES = 1 << 22


class BatchEngine:
    """`engine.submit(request)` -> an iterator of its token ids; `engine.cancel(request)` ends it early."""

    def __init__(self, model: PreTrainedModel, device: torch.device, settings: BatchSettings | None = None) -> None:
        self.model, self.device = model, device
        self.settings = settings or BatchSettings()
        self._types = layer_types(model.config)
        self._mask_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self._waiting: deque[BatchRequest] = deque()
        self._active: list[BatchRequest] = []
        self._wake = threading.Condition()
        self._closed = False
        # Observability, read by status and metrics (written by the stepping caller only).
        self.busy_s = 0.0
        self.steps = 0
        self.packed_steps = 0  # forwards that packed prefill chunks with other requests' tokens
        self.step_requests: deque[int] = deque(maxlen=4096)  # requests per decode step
        self.queue_wait_s: deque[float] = deque(maxlen=4096)  # submit -> a place in the batch
        self.observer: BatchObserver | None = None
        self._stepping = False  # a caller's thread is running a step

    # -- the caller's side -------------------------------------------------------------------------------------
    def submit(self, request: BatchRequest) -> Iterator[int]:
        """Queue `request`; iterate its tokens as the steps make them. Raises DeadlinePassed, or the error of a
        forward it was in. Closing the iterator early cancels the request."""
        request.trace.start = time.perf_counter()
        with self._wake:
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            self._waiting.append(request)
            self._wake.notify()
        return self._tokens(request)

    def _tokens(self, request: BatchRequest) -> Iterator[int]:
        try:
            while True:
                item = self._next_output(request)
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not request.trace.finish_reason:
                self.cancel(request)

    def _next_output(self, request: BatchRequest):
        """The request's next output. While it has none and no caller is running a step, run one on this thread:
        the callers take turns driving the batch (a lone request runs its own forwards, as unbatched)."""
        while True:
            with self._wake:
                while request._out.empty() and self._stepping:
                    self._wake.wait()
                if not request._out.empty():
                    return request._out.get_nowait()
                self._stepping = True
                self._admit()
                ready = not request._out.empty()  # it was just dropped (cancelled, expired)
            try:
                if not ready and self._active:
                    with torch.inference_mode():
                        self._iterate()
            finally:
                with self._wake:
                    self._stepping = False
                    if self._closed:
                        self._end_all(RuntimeError("the backbone is shutting down"))
                    self._wake.notify_all()

    def cancel(self, request: BatchRequest) -> None:
        with self._wake:
            request._cancelled = True
            if not self._stepping:
                self._admit()  # drops it now: its KV cache goes with it

    def snapshot(self) -> tuple[int, int, int]:
        """(requests decoding, requests prefilling, requests waiting) right now."""
        with self._wake:
            decoding = sum(r.decoding for r in self._active)
            return decoding, len(self._active) - decoding, len(self._waiting)

    def close(self) -> None:
        """End every request (with an error) and refuse new ones."""
        with self._wake:
            self._closed = True
            if not self._stepping:
                self._end_all(RuntimeError("the backbone is shutting down"))
            self._wake.notify_all()

    def _end_all(self, error: BaseException) -> None:
        for request in [*self._active, *self._waiting]:
            self._end(request, error)
        self._active.clear()
        self._waiting.clear()

    # -- a step, run by one caller at a time ------------------------------------------------------------------

    def _admit(self) -> None:
        """Under the lock: drop cancelled and expired requests, move arrivals into the batch while it has room."""
        now = time.time()
        for pool in (self._waiting, self._active):
            for request in list(pool):
                if request._cancelled:
                    self._drop(request, RequestCancelled(request.request_id))
                elif request.deadline is not None and now > request.deadline:
                    self._drop(request, DeadlinePassed(f"request {request.request_id}: its deadline passed"))
        while self._waiting and len(self._active) < self.settings.max_requests:
            request = self._waiting.popleft()
            request._cache = new_cache(self.model)
            request._generator = make_generator(request.params.seed)
            waited = time.perf_counter() - request.trace.start
            self.queue_wait_s.append(waited)
            if self.observer is not None:
                self.observer.admitted(waited)
            self._active.append(request)

    def _drop(self, request: BatchRequest, error: BaseException) -> None:
        if request in self._active:
            self._active.remove(request)
        else:
            self._waiting.remove(request)
        self._end(request, error)

    def _end(self, request: BatchRequest, error: BaseException | None) -> None:
        request._cache = None  # its KV memory goes now, not when the caller lets go
        request._out.put(_END if error is None else error)

    def _forward(self, requests: list[BatchRequest], tokens: list[int], run, name: str) -> torch.Tensor | None:
        """Run one forward for `requests` (tokens[i] of them each) with their rows' context; bill it. On error
        every request in it ends with that error and None is returned. Its span `name` is in the first
        request's trace, linked to the others'."""
        links = [trace.Link(trace.get_current_span(r.trace_context).get_span_context()) for r in requests[1:]]
        with _tracer.start_as_current_span(name, context=requests[0].trace_context, links=links) as span:
            span.set_attribute("remoe.step_requests", len(requests))
            return self._forward_in_span(requests, tokens, run)

    def _forward_in_span(self, requests: list[BatchRequest], tokens: list[int], run) -> torch.Tensor | None:
        batch, stop = [], 0
        for request, n in zip(requests, tokens, strict=True):
            stop += n
            batch.append(request.rows(stop))
        deadlines = [r.deadline for r in requests]
        deadline = None if None in deadlines else max(deadlines)  # a batch waits for its last request's deadline
        context = (
            current_batch.set(tuple(batch)),
            current_deadline.set(deadline),
            current_request_id.set(requests[0].request_id if len(requests) == 1 else f"batch-{self.steps}"),
        )
        start = time.perf_counter()
        try:
            logits = run()
        except Exception as e:  # noqa: BLE001 - the requests of this forward get the error; the rest go on
            log.warning("a forward of %d request(s) failed: %s", len(requests), e)
            with self._wake:
                for request in requests:
                    self._active.remove(request)
                    self._end(request, e)
            return None
        finally:
            current_request_id.reset(context[2])
            current_deadline.reset(context[1])
            current_batch.reset(context[0])
        elapsed = time.perf_counter() - start
        total = sum(tokens)
        self.busy_s += elapsed
        self.steps += 1
        if self.observer is not None:
            self.observer.forward(len(requests), total, decode=all(r.decoding for r in requests))
        for request, n in zip(requests, tokens, strict=True):
            request.backbone_s += elapsed * n / total
            request.steps += 1
            request.peers += len(requests) - 1
            request.shared_steps += len(requests) > 1
        return logits

    def _decode(self, requests: list[BatchRequest]) -> None:
        """One token of every decoding request, in one forward."""
        caches = [r._cache for r in requests]
        last = [r.trace.tokens[-1] for r in requests]

        def run() -> torch.Tensor:
            input_ids = torch.tensor([[t] for t in last], dtype=torch.long, device=self.device)  # [B, 1]
            if len(requests) == 1:
                return self._alone(input_ids, caches[0])
            out = self.model(
                input_ids=input_ids,
                position_ids=torch.tensor([[past_tokens(r)] for r in requests], device=self.device),  # [B, 1]
                attention_mask=decode_masks(caches, self._types, self._mask_dtype, self.device),
                cache=StepCache(caches),
                use_cache=True,
                logits_to_keep=1,
            )
            return out.logits[:, -1]  # [B, V]

        logits = self._forward(requests, [1] * len(requests), run, "decode_step")
        if logits is not None:
            self.step_requests.append(len(requests))
            self._emit(requests, logits)

    def _alone(self, input_ids: torch.Tensor, cache, every_position: bool = False) -> torch.Tensor:
        """One request's tokens [1, T] on its own cache, exactly as unbatched: its last position's logits [1, V]
        (every position's, [T, V], for a prompt whose log-probabilities were asked for)."""
        keep = 0 if every_position else 1
        logits = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=keep).logits
        return logits[0] if every_position else logits[:, -1]

    def _iterate(self) -> None:
        """One step: every decoding request's next token and this step's prefill chunks, in one packed forward
        when that is cheap enough; else the decode step, then each chunk alone."""
        decoding = [r for r in self._active if r.decoding]
        chunks = self._prefill_plan([r for r in self._active if not r.decoding])
        if chunks and (decoding or len(chunks) > 1) and self._packable(decoding, chunks):
            self._packed(decoding, chunks)
            return
        if decoding:
            self._decode(decoding)
        for chunk in chunks:
            self._packed([], [chunk])

    def _prefill_plan(self, prefilling: list[BatchRequest]) -> list[tuple[BatchRequest, int]]:
        """Up to `prefill_chunk` prompt tokens, oldest request first: (request, tokens of it this step)."""
        plan, budget = [], self.settings.prefill_chunk
        for request in prefilling:
            if budget <= 0:
                break
            n = min(budget, len(request.prompt) - request._prefilled)
            plan.append((request, n))
            budget -= n
        return plan

    def _packable(self, decoding: list[BatchRequest], chunks: list[tuple[BatchRequest, int]]) -> bool:
        """Packing costs attention scores N x (every request's keys) instead of each request's own."""
        if not set(self._types) <= PACKABLE_TYPES:
            return False
        queries = len(decoding) + sum(n for _, n in chunks)
        keys = sum(past_tokens(r) + 1 for r in decoding) + sum(r._prefilled + n for r, n in chunks)
        return queries * keys <= MAX_PACKED_SCORES

    def _packed(self, decoding: list[BatchRequest], chunks: list[tuple[BatchRequest, int]]) -> None:
        """Decode tokens and prefill chunks as one sequence [1, N] (a lone chunk: a plain forward on its cache).
        Each request's last position gives its next token; a prompt with echo keeps every position's logits."""
        requests = [*decoding, *(r for r, _ in chunks)]
        tokens = [[r.trace.tokens[-1]] for r in decoding]
        tokens += [r.prompt[r._prefilled : r._prefilled + n] for r, n in chunks]
        pasts = [past_tokens(r) for r in decoding] + [r._prefilled for r, _ in chunks]
        lengths = [len(t) for t in tokens]
        caches = [r._cache for r in requests]
        every = [not r.decoding and r.params.echo for r in requests]  # rows of all positions
        keep: list[int] = []  # the packed positions whose logits are needed, in request order
        last: list[int] = []  # each request's last row among them
        for start, n, all_ in zip(itertools.accumulate(lengths, initial=0), lengths, every, strict=False):
            keep += range(start, start + n) if all_ else [start + n - 1]
            last.append(len(keep) - 1)

        def run() -> torch.Tensor:
            input_ids = torch.tensor([[t for seq in tokens for t in seq]], dtype=torch.long, device=self.device)
            if len(requests) == 1:
                return self._alone(input_ids, caches[0], every[0])
            positions = torch.cat([p + torch.arange(n) for p, n in zip(pasts, lengths, strict=True)])  # [N]
            mask = packed_masks(caches, lengths, pasts, self._types, self._mask_dtype, self.device)
            out = self.model(
                input_ids=input_ids,
                position_ids=positions[None].to(self.device),
                attention_mask=mask,
                cache=PackedStepCache(caches, lengths),
                use_cache=True,
                logits_to_keep=torch.tensor(keep, device=self.device),
            )
            return out.logits[0]  # [len(keep), V]

        name = "prefill" if not decoding else "mixed_step"
        logits = self._forward(requests, lengths, run, name)
        if logits is None:
            return
        ready = list(range(len(decoding)))
        for i, (request, n) in enumerate(chunks, start=len(decoding)):
            if every[i]:  # row j predicts prompt token prefilled + j + 1 (the prompt's last row: the first new one)
                scored = request.prompt[request._prefilled + 1 : request._prefilled + n + 1]
                request.trace.prompt_logprobs += token_logprobs(
                    logits[last[i] - n + 1 : last[i] - n + 1 + len(scored)], scored, request.params.logprobs or 0
                )
            request._prefilled += n
            if request.decoding:  # its prompt is done: this row's logits give its first token
                if request.recorder is not None:
                    request.recorder.start_decode()
                ready.append(i)
        if decoding:
            self.step_requests.append(len(decoding))
        if len(requests) > 1:
            self.packed_steps += 1
        if ready:
            self._emit([requests[i] for i in ready], logits[[last[i] for i in ready]])

    @staticmethod
    def _scores(requests: list[BatchRequest], logits: torch.Tensor, tokens: list[int]) -> dict[int, TokenLogprob]:
        """The chosen tokens' log-probabilities of the rows that asked for them: one log-softmax for all."""
        rows = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        if not rows:
            return {}
        top = max(requests[i].params.logprobs for i in rows)
        scores = token_logprobs(logits[rows], [tokens[i] for i in rows], top)
        return {i: keep_top(s, requests[i].params.logprobs) for i, s in zip(rows, scores, strict=True)}

    def _emit(self, requests: list[BatchRequest], logits: torch.Tensor) -> None:
        """Sample each request's next token from its logits row [V]; hand it out; end finished requests."""
        greedy = [i for i, r in enumerate(requests) if r.params.temperature == 0.0]
        picks: dict[int, int] = {}
        if greedy:  # one argmax (one device sync) for every greedy row
            picks = dict(zip(greedy, torch.argmax(logits[greedy], dim=-1).tolist(), strict=True))
        tokens = [picks.get(i) for i in range(len(requests))]
        for i, request in enumerate(requests):
            if tokens[i] is None:
                tokens[i] = sample_next(logits[i], request.params, request._generator)
        scores = self._scores(requests, logits, tokens)
        now = time.perf_counter()
        with self._wake:
            for i, request in enumerate(requests):
                token = tokens[i]
                trace = request.trace
                if i in scores:
                    trace.logprobs.append(scores[i])
                trace.tokens.append(token)
                trace.end = now
                if len(trace.tokens) == 1:
                    trace.first_token_at = now
                if request.params.stop_on_eos and token in request.eos_token_ids:
                    trace.finish_reason = "stop"
                elif len(trace.tokens) >= request.params.max_new_tokens:
                    trace.finish_reason = "length"
                request._out.put(token)
                if trace.finish_reason:
                    self._active.remove(request)
                    self._end(request, None)
