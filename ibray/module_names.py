"""How an own PyTorch module is named as an `architecture`: 'path/to/nets.py:factory' (a file)
or 'package.module:factory' (an importable module), '...@<SHA-256>' once pinned.

The grammar only, like ibray.data_names for data files: it reads no file and imports nothing
of ibray or torch, so the config can check a value without importing the user's code.
Loading is ibray.own_module's, pinning ibray.module_pin's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_SHA256 = re.compile(r"^(?P<rest>.*)@(?P<sha256>[0-9a-fA-F]{64})$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MODULE_GRAMMAR = "path/to/nets.py:factory (a file) or package.module:factory (an importable module)"


@dataclass(frozen=True)
class ModuleRef:
    """An own module named by `architecture`: where its code is and which factory builds it."""

    source: str  # a .py file's path (made absolute by the config), or a dotted module name
    factory: str  # the function (or class) that returns the torch.nn.Module
    sha256: str | None  # SHA-256 of the source file's bytes when pinned, else None

    @property
    def is_file(self) -> bool:
        return self.source.endswith(".py")

    def value(self, sha256: str | None = None) -> str:
        """The `architecture` value: source, factory and (pinned) the hash."""
        digest = sha256 or self.sha256
        return f"{self.source}:{self.factory}" + (f"@{digest}" if digest else "")

    def label(self) -> str:
        """A short name for reports and trial ids: 'nets.py:lenet5@1a2b3c4d'."""
        name = os.path.basename(self.source) if self.is_file else self.source
        digest = f"@{self.sha256[:8]}" if self.sha256 else ""
        return f"{name}:{self.factory}{digest}"


def module_ref(value) -> ModuleRef | None:
    """The own module an `architecture` value names, or None when it names none (no ':' in it:
    a built-in name or dense widths). Raises ValueError with what is wrong for a value with a
    ':' that does not follow the grammar."""
    if not isinstance(value, str) or ":" not in value:
        return None
    sha256 = None
    pinned = _SHA256.match(value)
    if pinned:
        value, sha256 = pinned.group("rest"), pinned.group("sha256").lower()
    source, _, factory = value.rpartition(":")
    if not _IDENTIFIER.match(factory):
        raise ValueError(f"{factory!r} after the last ':' is not a Python name of a factory; write {MODULE_GRAMMAR}")
    if not source.endswith(".py") and not _DOTTED.match(source):
        raise ValueError(f"{source!r} is neither a .py file nor a dotted module name; write {MODULE_GRAMMAR}")
    return ModuleRef(source, factory, sha256)
