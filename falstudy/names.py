"""The one check for names that become folder or file names under the results root.

A results group (``RunConfig.name``, a sweep's ``name``), a run id and a prepared corpus's
name each become one path component: ``results/<name>/runs/<run_id>/``. Such a name is one
plain component, never ``..``, an absolute path, a separator, empty or NUL, so nothing a
config, a spec or the command line says can write outside the folder it names as the root.
The roots themselves (``results_dir``, ``data prepare --out``, ``report --out``) are paths the
user chooses and are not checked here.
"""

from __future__ import annotations

import re

from falstudy.errors import FalstudyError

# '+' appears in run ids made from values such as 1e+20 (falstudy.sweep.spec.cell_run_id)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
MAX_LEN = 120  # well under the 255 bytes a file name may have, with room for suffixes
RULE = "letters, digits and _ . + - (not starting with . + - or _), at most 120 characters"


class BadName(FalstudyError, ValueError):
    """A FalstudyError (one line, exit 2) that pydantic validators also report as a field error."""


def check_name(value: object, what: str = "name") -> str:
    """``value`` if it is a safe single path component, else BadName saying why and what is allowed."""
    if not isinstance(value, str):
        raise BadName(f"{what} must be a string, got {type(value).__name__}".lstrip())
    if not NAME_RE.fullmatch(value) or len(value) > MAX_LEN:
        why = "is empty" if not value else "is too long" if len(value) > MAX_LEN else \
            "would leave its folder" if value in (".", "..") or "/" in value or "\\" in value else \
            "holds a NUL byte" if "\0" in value else "has characters a folder name must not have"
        raise BadName(f"{what} {value[:60]!r} {why}: it names a folder, so use {RULE}".lstrip())
    return value


def safe_name(text: str, fallback: str = "x") -> str:
    """A name derived from free text (a folder's name, a label) made to pass ``check_name``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "-", text).lstrip("._+-")[:MAX_LEN]
    return cleaned or fallback
