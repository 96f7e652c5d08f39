"""How the profile samples end-to-end latency: rounds over every prompt length until enough decode was timed, and
the mean (what a bill sums) of each length's requests; and the spread bench/profile_sampling.py reports."""

from __future__ import annotations

import pytest

from bench.profile_sampling import between, spreads
from remoe.profiling.measure import PROMPT_LENGTHS, latency_rows


def test_rounds_visit_every_length_in_turn_until_the_decode_time_is_reached():
    calls: list[int] = []

    def generate(ids: list[int], tokens: int) -> tuple[float, float]:
        calls.append(len(ids))
        return 0.05, 0.1  # 10 tokens: 0.9 s of decode per request

    rows = latency_rows(generate, 10, 2, lambda _: None, "test", min_decode_s=10.0)
    timed = calls[2:]  # after the two warm-up requests
    # 2 rounds time 7.2 s, 3 rounds 10.8 s: the third round is the last, and each visits the lengths in order
    assert timed == list(PROMPT_LENGTHS) * 3
    assert all(rows[n]["requests"] == 3 for n in PROMPT_LENGTHS)


def test_repeats_alone_when_no_decode_time_is_asked():
    rows = latency_rows(lambda ids, tokens: (0.01, 0.01), 8, 2, lambda _: None, "test")
    assert all(rows[n]["requests"] == 2 for n in PROMPT_LENGTHS)


def test_each_length_takes_the_mean_so_a_slow_request_counts_as_billed():
    tpots = iter([0.0, 0.0] + [0.01] * len(PROMPT_LENGTHS) * 2 + [0.04] * len(PROMPT_LENGTHS))
    rows = latency_rows(lambda ids, tokens: (0.02, next(tpots)), 8, 3, lambda _: None, "test")
    # per length 0.01, 0.01, 0.04: the median would say 0.01
    assert all(rows[n]["tpot_s"] == pytest.approx(0.02) for n in PROMPT_LENGTHS)


def test_spread_of_samples_against_the_whole_run():
    # 11 tokens: 10 decode steps a request, 1 s of decode at 0.1 s a step and 2 s at 0.2
    tpots = [0.1, 0.2] * 6  # mean 0.15
    one, three = spreads([tpots], 11, (1.0, 3.0))
    assert (one.samples, one.rms_error, one.max_error) == (12, pytest.approx(1 / 3), pytest.approx(1 / 3))
    # three-second samples hold one slow and one fast request each: each is the run's mean
    assert (three.samples, three.rms_error, three.max_error) == (6, pytest.approx(0.0), pytest.approx(0.0))
    assert spreads([tpots], 11, (100.0,)) == []  # fewer than two samples: no spread
    # each series against its own mean: a slower cluster's steady series has no spread within it
    assert spreads([[0.1] * 4, [0.2] * 4], 11, (1.0,))[0].rms_error == pytest.approx(0.0)


def test_spread_between_clusters_is_each_ones_mean_against_the_mean_of_all():
    rms, largest = between([[0.1, 0.1], [0.2, 0.2], [0.15]])  # means 0.1, 0.2, 0.15 around 0.15
    assert rms == pytest.approx((2 / 27) ** 0.5) and largest == pytest.approx(1 / 3)
