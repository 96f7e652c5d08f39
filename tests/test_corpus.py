"""The prompt corpus: parsing of each source, and the real corpus built from Debian's packages."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from remoe.corpus.build import (
    PROMPT_CHARS,
    build_corpus,
    fortunes,
    python_docs,
    read_prompts,
    split,
    write_jsonl,
)


def test_fortune_files_split_on_percent_lines_and_prefer_utf8(tmp_path):
    (tmp_path / "de").mkdir()
    for name in ("quotes", "quotes.dat", "de/witze", "de/witze.dat"):
        (tmp_path / name).write_text("x")
    (tmp_path / "quotes").write_text("A fortune that is long enough to keep, really.\n%\nshort\n%\n" + "y" * 900)
    (tmp_path / "de" / "witze.u8").write_text("Ein Witz über Größe, lang genug für einen Prompt.\n%\n")
    (tmp_path / "notes.txt").write_text("no .dat beside it: not a fortune file " * 3)
    got = list(fortunes(tmp_path))
    assert [(p.source, p.lang) for p in got] == [
        ("fortunes/de/witze", "de"),
        ("fortunes/quotes", "en"),
        ("fortunes/quotes", "en"),
    ]
    assert got[0].prompt.startswith("Ein Witz über Größe")
    assert len(got[2].prompt) == PROMPT_CHARS


def test_html_paragraphs_become_prompts(tmp_path):
    page = (
        "<html><p>Short.</p><p>The <code>asyncio</code> module provides infrastructure for writing "
        "single-threaded concurrent code.</p><pre>not a paragraph</pre></html>"
    )
    (tmp_path / "asyncio.html").write_text(page)
    got = list(python_docs(tmp_path))
    assert [p.prompt for p in got] == [
        "The asyncio module provides infrastructure for writing single-threaded concurrent code."
    ]
    assert got[0].source == "python-docs/asyncio"


def test_read_prompts_takes_jsonl_or_plain_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"prompt": "one", "x": 1}) + "\n\n" + json.dumps({"prompt": "two"}))
    (tmp_path / "b.txt").write_text("first line\nsecond line\n")
    assert read_prompts(tmp_path / "a.jsonl") == ["one", "two"]
    assert read_prompts(tmp_path / "b.txt") == ["first line", "second line"]
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "no prompt"}))
    with pytest.raises(ValueError, match="prompt"):
        read_prompts(tmp_path / "c.jsonl")


@pytest.mark.slow
def test_the_real_corpus_has_thousands_of_prompts_from_several_domains_and_languages(tmp_path):
    prompts = build_corpus(progress=False)
    assert len(prompts) >= 3000
    assert len(prompts) == len({p.prompt for p in prompts}), "duplicates"
    domains = Counter(p.domain for p in prompts)
    assert {"fortunes", "python-docs", "licenses"} <= set(domains)
    assert len(Counter(p.lang for p in prompts)) >= 3
    assert all(40 <= len(p.prompt) <= PROMPT_CHARS for p in prompts)
    assert build_corpus(progress=False)[:50] == prompts[:50], "the shuffle is seeded"
    train, test = split(prompts[:6000])
    assert len(train) + len(test) == 6000 and not {p.prompt for p in train} & {p.prompt for p in test}
    assert set(Counter(p.domain for p in test)) == set(Counter(p.domain for p in prompts[:6000]))
    write_jsonl(test, tmp_path / "test.jsonl")
    assert read_prompts(tmp_path / "test.jsonl") == [p.prompt for p in test]
