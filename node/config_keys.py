"""One check for every table a user writes in TOML: a misspelt key is an error that lists the right ones."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from node.errors import ConfigError


def check_keys(raw: Any, known: Collection[str], where: str, hint: str = "") -> Mapping[str, Any]:
    """Return `raw` if it is a table whose keys are all in `known`; else ConfigError naming the strays."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
                          + (f" ({hint})" if hint else ""))
    return raw
