"""How a data set is named: the built-in names, and the grammar of a data file's `dataset`
value ('path', 'path#label column' for tables, '...@<SHA-256>' once pinned).

Below the config and the loaders alike: it reads no file and imports nothing of ibray, so the
config can check a value and the loaders can read one without importing each other.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

DATASETS = ("synthetic12", "szt", "mnist")
# A data set may also be a file the user names (see data_file); these are the types read.
DATA_FILE_TYPES = (".npz", ".parquet", ".csv")
TABLE_TYPES = (".parquet", ".csv")  # these take a label column; a .npz has arrays x and y
DEFAULT_LABEL_COLUMN = "label"

_SHA256 = re.compile(r"^(?P<rest>.*)@(?P<sha256>[0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class DataFile:
    """A data set given as a file: the parts of its `dataset` value (see TrialConfig)."""

    path: str  # as given (made absolute when the config is made)
    label_column: str | None  # the label column named in the value (tables), None if not named
    sha256: str | None  # SHA-256 of the file's bytes when pinned, else None

    def identity(self, label_column: str) -> str:
        """The pinned value: absolute path, a table's non-default label column, the content hash."""
        return f"{self.path}{self.column_suffix(label_column)}@{self.sha256}"

    def label(self, label_column: str) -> str:
        """A short name for reports: file name, a table's non-default label column, 8 hex digits."""
        digest = f"@{self.sha256[:8]}" if self.sha256 else ""
        return f"{os.path.basename(self.path)}{self.column_suffix(label_column)}{digest}"

    def column_suffix(self, label_column: str) -> str:
        """'#<column>' for a table whose labels are not in 'label'; '' otherwise."""
        return f"#{label_column}" if self.suffix in TABLE_TYPES and label_column != DEFAULT_LABEL_COLUMN else ""

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.path)[1].lower()


def data_file(value) -> DataFile | None:
    """The file a `dataset` value names, or None for a built-in name (or something that is
    neither). A value names a file when it holds a path separator or a file extension; it may
    end in '#<label column>' (tables) and '@<SHA-256>' (pinned), as pinned values do."""
    if not isinstance(value, str) or value in DATASETS:
        return None
    sha256 = None
    pinned = _SHA256.match(value)
    if pinned:
        value, sha256 = pinned.group("rest"), pinned.group("sha256").lower()
    column = None
    # '#' only separates a label column after a known file type: 'data#1.csv' is a file name
    match = re.match(r"^(?P<path>.*\.(?:parquet|csv))#(?P<column>[^#@]+)$", value, re.IGNORECASE)
    if match:
        value, column = match.group("path"), match.group("column")
    if "/" not in value and os.sep not in value and not os.path.splitext(value)[1]:
        return None
    return DataFile(value, column, sha256)


def dataset_label(dataset: str, label_column: str = DEFAULT_LABEL_COLUMN) -> str:
    """How reports name a data set: a built-in's name, or 'file.npz@1a2b3c4d' for a file."""
    file = data_file(dataset)
    return dataset if file is None else file.label(file.label_column or label_column)
