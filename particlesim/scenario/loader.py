"""Reading scenario files and applying ``--set key=value`` overrides."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from particlesim.errors import ScenarioError

#: One segment of a ``--set`` key path: a bare key, an integer index, or a TOML-quoted key
#: (``"integrator.lr"``, ``'a b'``), optionally followed by ``[index]``, then ``.`` or the end.
_SEGMENT = re.compile(
    r"""(?:(?P<number>-?[0-9]{1,18})
         |(?P<bare>[A-Za-z_][A-Za-z0-9_-]*)
         |(?P<quoted>"(?:[^"\\\n]|\\.)*"|'[^'\n]*'))
        (?:\[(?P<index>-?[0-9]{1,18})\])?
        (?P<end>\.|\Z)""",
    re.X,
)
_KEY_PART = re.compile(r"""(?:[^="']|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')*""")


def read_scenario(path: str | Path) -> dict[str, Any]:
    """Parse a TOML scenario file; a missing file or a syntax error is one ScenarioError line."""
    file = Path(path)
    if not file.exists():
        raise ScenarioError(f"scenario file {file} not found")
    if not file.is_file():
        raise ScenarioError(f"scenario path {file} is not a file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(file)
        ) from None
    return parse_scenario(text, source=str(file))


def parse_scenario(text: str, *, source: str = "<string>") -> dict[str, Any]:
    """Parse scenario TOML text (errors carry line and column)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"invalid TOML: {exc}", source=source) from None
    except RecursionError:
        raise ScenarioError(
            "invalid TOML: arrays or tables nested too deeply", source=source
        ) from None


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax when it parses (``0.01``, ``true``, ``[1, 2]``,
    ``"x"``), otherwise the bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except (tomllib.TOMLDecodeError, RecursionError):  # not TOML (or nested absurdly deep)
        return text


def split_path(path: str) -> list[str | int]:
    """``"groups[1].size"`` or ``"groups.1.size"`` → ``["groups", 1, "size"]``.

    Keys holding dots are quoted as in TOML: ``sweep.grid."integrator.lr"`` →
    ``["sweep", "grid", "integrator.lr"]``.
    """
    parts: list[str | int] = []
    position = 0
    while True:
        match = _SEGMENT.match(path, position)
        if match is None or (match["end"] == "." and match.end() == len(path)):
            raise ScenarioError(f"--set: malformed key path {path!r}")
        if match["number"] is not None:
            parts.append(int(match["number"]))
        elif match["bare"] is not None:
            parts.append(match["bare"])
        else:
            try:  # TOML decodes the quoted key, escapes included
                (key,) = tomllib.loads(f"{match['quoted']} = 0")
            except (tomllib.TOMLDecodeError, ValueError):
                raise ScenarioError(f"--set: malformed key path {path!r}") from None
            parts.append(key)
        if match["index"] is not None:
            parts.append(int(match["index"]))
        position = match.end()
        if not match["end"]:
            return parts


#: Keys that exclude each other: an assignment to one removes the other from its table, so
#: ``--set run.steps=100`` shortens a scenario that gives ``epochs`` (and a sweep may vary
#: either).
EXCLUSIVE_KEYS: dict[str, str] = {
    "run.epochs": "steps",
    "run.steps": "epochs",
    "integrator.temperature": "beta",
    "integrator.beta": "temperature",
    "integrator.temperature_final": "beta_final",
    "integrator.beta_final": "temperature_final",
}


def apply_override(scenario: dict[str, Any], assignment: str) -> None:
    """Apply one ``key.path=value`` assignment in place (tables are created as needed).

    Assigning one of :data:`EXCLUSIVE_KEYS` drops its partner from the same table.
    """
    key_length = _KEY_PART.match(assignment).end()  # up to the first "=" outside quotes
    if assignment[key_length : key_length + 1] != "=":
        if "=" in assignment:
            raise ScenarioError(f"--set: malformed key path {assignment.partition('=')[0]!r}")
        raise ScenarioError(f"--set {assignment!r}: expected KEY=VALUE, e.g. integrator.lr=0.01")
    path, text = assignment[:key_length], assignment[key_length + 1 :]
    parts = split_path(path.strip())
    node: Any = scenario
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(str(p) for p in parts[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                raise ScenarioError(f"--set {path}: no element {part} at {here}")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ScenarioError(f"--set {path}: {here} is not a table")
            node = node.setdefault(part, {})
    last = parts[-1]
    value = parse_value(text.strip())
    if isinstance(last, int):
        if not isinstance(node, list) or not -len(node) <= last < len(node):
            raise ScenarioError(f"--set {path}: no element {last}")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
        partner = EXCLUSIVE_KEYS.get(".".join(str(p) for p in parts))
        if partner is not None:
            node.pop(partner, None)
    else:
        raise ScenarioError(f"--set {path}: the parent is not a table")
