"""`remoe corpus build`: real prompts from several domains and languages, available offline.

Sources (Debian packages; `scripts/install-system-deps.sh` installs them):
- fortunes, fortunes-min (English quotes, jokes, literature), fortunes-de, fortunes-es, fortunes-it
- python3-doc (the Python library reference: technical prose)
- /usr/share/common-licenses (legal text; part of every Debian system)
Each prompt is the first 500 characters of one fortune or one paragraph, as in the paper's workload,
labelled with its source, domain and language; duplicates are dropped; the order is a seeded shuffle, and
a held-out test split keeps every source's share.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path

from tqdm import tqdm

PROMPT_CHARS = 500
MIN_CHARS = 40
FORTUNES = Path("/usr/share/games/fortunes")
PYTHON_DOCS = next(
    (p for p in sorted(Path("/usr/share/doc").glob("python3*-doc/html/library")) if p.is_dir()),
    Path("/usr/share/doc/python3-doc/html/library"),
)
LICENSES = Path("/usr/share/common-licenses")
PACKAGES = "fortunes fortunes-min fortunes-de fortunes-es fortunes-it python3-doc"
_LANGS = {"de": "de", "es": "es", "it": "it"}


@dataclass(frozen=True, slots=True)
class Prompt:
    prompt: str
    source: str  # e.g. "fortunes/de/anekdoten", "python-docs/asyncio-task"
    domain: str  # "fortunes", "python-docs", "licenses"
    lang: str


def _clean(text: str) -> str:
    return re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n", text)).strip()


def fortunes(root: Path = FORTUNES) -> Iterator[Prompt]:
    for path in sorted(root.rglob("*")):
        # A fortune file has a .dat index beside it (strfile); .u8 is its UTF-8 twin where both exist.
        if not path.is_file() or path.suffix in (".dat", ".u8") or not path.with_name(path.name + ".dat").exists():
            continue
        utf8 = path.with_name(path.name + ".u8")
        text = (utf8 if utf8.is_file() else path).read_text(errors="replace")
        lang = _LANGS.get(path.parent.name, "en")
        source = f"fortunes/{path.relative_to(root)}"
        for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            entry = _clean(entry)
            if len(entry) >= MIN_CHARS:
                yield Prompt(entry[:PROMPT_CHARS], source, "fortunes", lang)


class _Paragraphs(HTMLParser):
    """Text of <p> elements of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.paragraphs: list[str] = []
        self._depth = 0
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "p":
            self._depth += 1

    def handle_endtag(self, tag):
        if tag == "p" and self._depth:
            self._depth -= 1
            if not self._depth:
                self.paragraphs.append(_clean("".join(self._buf)))
                self._buf = []

    def handle_data(self, data):
        if self._depth:
            self._buf.append(data)


def python_docs(root: Path = PYTHON_DOCS) -> Iterator[Prompt]:
    for path in sorted(root.glob("*.html")):
        parser = _Paragraphs()
        parser.feed(path.read_text(errors="replace"))
        for paragraph in parser.paragraphs:
            if len(paragraph) >= 2 * MIN_CHARS:
                yield Prompt(paragraph[:PROMPT_CHARS], f"python-docs/{path.stem}", "python-docs", "en")


def licenses(root: Path = LICENSES) -> Iterator[Prompt]:
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        for paragraph in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            paragraph = _clean(paragraph)
            if len(paragraph) >= 2 * MIN_CHARS:
                yield Prompt(paragraph[:PROMPT_CHARS], f"licenses/{path.name}", "licenses", "en")


def build_corpus(seed: int = 0, progress: bool = True) -> list[Prompt]:
    """Every available prompt, deduplicated, in a seeded shuffle. Raises naming the missing packages."""
    missing = [str(p) for p in (FORTUNES, PYTHON_DOCS) if not p.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not found: install the corpus packages "
            f"(apt-get install {PACKAGES}, or scripts/install-system-deps.sh)"
        )
    seen: set[str] = set()
    prompts: list[Prompt] = []
    sources = [("fortunes", fortunes()), ("python-docs", python_docs()), ("licenses", licenses())]
    for _, items in tqdm(sources, desc="corpus", unit="source", disable=not progress):
        for item in items:
            if item.prompt not in seen:
                seen.add(item.prompt)
                prompts.append(item)
    random.Random(seed).shuffle(prompts)
    return prompts


def split(prompts: list[Prompt], test_fraction: float = 0.1) -> tuple[list[Prompt], list[Prompt]]:
    """Held-out test split that keeps each domain's share (the shuffle order decides who is held out)."""
    train, test = [], []
    by_domain: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_domain.setdefault(p.domain, []).append(p)
    for items in by_domain.values():
        cut = max(1, round(len(items) * test_fraction))
        test += items[:cut]
        train += items[cut:]
    return train, test


def write_jsonl(prompts: list[Prompt], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in prompts:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")


def read_prompts(path: Path) -> list[str]:
    """Prompts from JSON Lines (a "prompt" field per line) or plain text (one prompt a line)."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                out.append(str(json.loads(line)["prompt"]))
                continue
            except (json.JSONDecodeError, KeyError):
                raise ValueError(f"{path}: a JSON line without a 'prompt' field: {line[:80]!r}") from None
        out.append(line)
    return out
