"""The one YAML loader for everything a user writes (run configs, sweep specs, ``--set`` values).

PyYAML's SafeLoader builds no Python objects beyond plain data, but on its own it will, for a
hostile or careless file: take minutes over a huge one, expand aliases without bound ("billion
laughs": a few hundred bytes that pydantic then walks as 10^9 values), keep the last of two
equal keys silently, and fail with a UnicodeDecodeError on a binary or UTF-16 file. Here:

- a file over ``MAX_BYTES`` is refused before it is parsed;
- at most ``MAX_NODES`` values, counted as composed and again with every alias expanded, and
  at most ``MAX_DEPTH`` levels of nesting (an alias to its own anchor, a cycle, is refused);
- a key given twice in one mapping is refused with both line numbers (``<<`` merges may still
  be overridden, which is what they are for);
- the bytes must be UTF-8 (a UTF-8 BOM is fine); the error names the encoding problem.

Every refusal is a FalstudyError on one line naming the source. PyYAML alone suffices (a
SafeLoader subclass: composing is counted, mappings are checked as they are built), so no
stricter parser is added as a dependency.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

from falstudy.errors import FalstudyError

MAX_BYTES = 256 * 1024  # the largest ready spec is a few KB
MAX_NODES = 20_000  # values in a document, aliases expanded
MAX_DEPTH = 50
_MERGE = "tag:yaml.org,2002:merge"
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


class _Refused(Exception):
    """A limit or duplicate found while loading; becomes a FalstudyError with the source."""


class _Loader(yaml.SafeLoader):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._composed, self._depth = 0, 0

    def compose_node(self, parent, index):  # counted before it recurses: no RecursionError, no huge tree
        self._composed += 1
        if self._composed > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} values; a config or spec needs far fewer")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"line {self.peek_event().start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeConstructor refuses it below
            if first is not None:
                raise _Refused(f"line {line}: duplicate key {key!r} (first at line {first}); keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _expanded(node: yaml.Node, memo: dict[int, tuple[int, int]], active: set[int]) -> tuple[int, int]:
    """(values, depth) of ``node`` with every alias expanded; memoised, so a shared node costs once."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _Refused(f"line {node.start_mark.line + 1}: an alias refers to its own anchor (a recursive structure)")
    active.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    count, depth = 1, 0
    for child in children:
        n, d = _expanded(child, memo, active)
        count, depth = count + n, max(depth, d)
        if count > MAX_NODES:
            raise _Refused(f"aliases expand to more than {MAX_NODES} values (line {node.start_mark.line + 1}); "
                           "write the values out instead of nesting aliases")
    if depth + 1 > MAX_DEPTH:
        raise _Refused(f"line {node.start_mark.line + 1}: aliases nest more than {MAX_DEPTH} levels deep")
    active.discard(key)
    memo[key] = (count, depth + 1)
    return memo[key]


def decode(raw: bytes, source: str) -> str:
    for bom, name in _BOMS:
        if raw.startswith(bom):
            raise FalstudyError(f"{source}: the file is {name} text; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FalstudyError(f"{source}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}: "
                            f"{err.reason}); save it as UTF-8") from None


def loads(text: str, source: str) -> Any:
    """One YAML document from ``text``, within the limits above; None for an empty one."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise FalstudyError(f"{source}: {len(text)} characters is over the {MAX_BYTES // 1024} KiB a config may have")
    loader = None
    try:
        loader = _Loader(text)  # the reader checks every character here
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded(node, {}, set())
        return loader.construct_document(node)
    except _Refused as err:
        raise FalstudyError(f"{source}: {err}") from None
    except yaml.reader.ReaderError as err:
        code = ord(err.character) if isinstance(err.character, str) else err.character
        what = "a NUL byte (a binary file, or UTF-16 without a BOM?)" if code == 0 else f"character #x{code:04x}"
        raise FalstudyError(f"{source}: offset {err.position}: {what} is not allowed in YAML") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}:" if mark else ""
        problem = " ".join(str(err.problem or err.context or "invalid").split())
        raise FalstudyError(f"{source}:{where} malformed YAML: {problem}") from None
    except yaml.YAMLError as err:
        raise FalstudyError(f"{source}: malformed YAML: {' '.join(str(err).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path: str | Path) -> Any:
    """The YAML document in ``path`` (a FalstudyError naming the file for anything wrong)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.yaml"))[:3]
        hint = f" (it holds {', '.join(found)}{', ...' if found else ''})" if found else ""
        raise FalstudyError(f"{path}: is a folder, not a YAML file; pass a file such as "
                            f"{path / (found[0] if found else 'spec.yaml')}{hint}")
    if not path.is_file():
        raise FalstudyError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise FalstudyError(f"{path}: {size} bytes is over the {MAX_BYTES // 1024} KiB a config or spec may have; "
                            "is it the right file?")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as err:
        raise FalstudyError(f"{path}: cannot read it ({err.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise FalstudyError(f"{path}: over the {MAX_BYTES // 1024} KiB a config or spec may have")
    return loads(decode(raw, str(path)), str(path))
