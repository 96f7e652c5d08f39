"""Every measured number README quotes is in the results it cites.

A README block (a paragraph, or one list item) that names `docs/results/NAME.md` (globs allowed, and further
bare `NAME.md` names beside one) quotes those files; a list item without a citation of its own quotes what the
paragraph introducing its list cites. Each number in the block with a result's unit (x, %, ms, s, GB, MiB, GiB,
GB/s) must appear in one of those files (the table, or its JSON beside it), equal or rounded to the digits README
shows. A number README makes up cannot pass; one that is a setting, not a result, has no unit or sits in a block
that cites nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
_CITED = re.compile(r"docs/results/([\w\-*]+)\.md")
_BARE = re.compile(r"`([\w\-]+)\.md`")
_QUOTED = re.compile(r"(?<![\w.\-/^])(\d+(?:\.\d+)?)(?![\d.]*\d)(?:(x\b|%)|\s?(ms|s|GB/s|GB|MiB|GiB|MB)\b)")
_TABLE_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def _blocks(text: str) -> list[tuple[str, bool]]:
    """(block, is a list item) in order: paragraphs, their list items apart."""
    out: list[tuple[str, bool]] = []
    for paragraph in re.split(r"\n\s*\n", text):
        parts = re.split(r"\n(?=- )", paragraph)
        for i, part in enumerate(parts):
            out.append((part, part.startswith("- ") and (i > 0 or paragraph.startswith("- "))))
    return out


def _cited(block: str) -> set[Path]:
    files: set[Path] = set()
    for pattern in _CITED.findall(block):
        files |= set(RESULTS.glob(f"{pattern}.md"))
    if files:
        files |= {RESULTS / f"{name}.md" for name in _BARE.findall(block) if (RESULTS / f"{name}.md").is_file()}
    return files


def _numbers(files: set[Path]) -> list[str]:
    out: list[str] = []
    for f in files:
        for path in (f, f.with_suffix(".json")):
            if path.is_file():
                out += _TABLE_NUMBER.findall(path.read_text())
    return out


# A result may be stored in another unit than README quotes it in: seconds for ms, a fraction for a percentage.
_OTHER_UNITS = {"ms": (1000.0,), "s": (0.001,), "%": (100.0,)}


def _shows(quoted: str, unit: str, table: list[str]) -> bool:
    digits = len(quoted.partition(".")[2])
    want = float(quoted)
    for t in table:
        value = float(t)
        if "e" in t or len(t.partition(".")[2]) >= digits:  # fewer digits than README's: not where it came from
            if abs(round(value, digits) - want) < 1e-9:
                return True
        if any(abs(round(value * f, digits) - want) < 1e-9 for f in _OTHER_UNITS.get(unit, ())):
            return True
    return False


def unquoted_numbers(readme: str) -> list[str]:
    problems = []
    lead_in: set[Path] = set()
    for block, is_item in _blocks(readme):
        files = _cited(block)
        if not is_item:
            lead_in = files if block.rstrip().endswith(":") else set()
        elif not files:
            files = lead_in
        if not files:
            continue
        table = _numbers(files)
        for m in _QUOTED.finditer(block):
            if not _shows(m.group(1), m.group(2) or m.group(3), table):
                where = block[max(0, m.start() - 50) : m.end() + 10].replace("\n", " ")
                problems.append(f"{m.group(1)} (in {sorted(f.name for f in files)}): ...{where}...")
    return problems


def test_every_number_readme_quotes_is_in_the_results_it_cites():
    problems = unquoted_numbers((ROOT / "README.md").read_text())
    assert not problems, "README quotes numbers its cited results do not show:\n" + "\n".join(problems)


def test_a_made_up_number_is_caught_and_a_rounded_one_is_not():
    table = sorted(RESULTS.glob("quantization.md"))
    assert table, "docs/results/quantization.md is the example"
    text = table[0].read_text()
    # the example: a two-decimal percentage the table shows (whichever run wrote it), and one it does not
    shown = sorted({float(m) for m in re.findall(r"\| (\d\d\.\d\d)% \|", text)})
    assert shown, "the example needs a percentage with two decimals in quantization.md"
    value = shown[0]
    made_up = next(v for v in (value + 0.6, value - 0.6) if all(abs(round(v, 1) - s) >= 0.05 for s in shown))
    assert unquoted_numbers(f"Agreement {value:.1f}% (`docs/results/quantization.md`).") == []
    assert unquoted_numbers(f"Agreement {made_up:.1f}% (`docs/results/quantization.md`).") != []
    assert unquoted_numbers(f"- a list item: {made_up:.1f}%") == []  # cites nothing, introduced by nothing
    assert unquoted_numbers(f"Measured (`docs/results/quantization.md`):\n\n- agreement {made_up:.1f}%") != []
