"""What a trial tells the launcher beyond its rows, known to both sides of the Ray wing: the
keys of its one-off reports (a data set it cannot load, a disk it cannot write), the storage
faults no retry can mend, the error of a config outside the sweep's grid, and the keys that say
which trials are the same grid point or train on the same data. Imports no Ray: the trainable,
the live view, the reader of Tune's records and the launcher all stand on it.
"""

from __future__ import annotations

import errno
import json
import re

from ibray.config import TrialConfig

DATA_ERROR = "data_error"  # the key of the one report of a trial that cannot load its data
STORAGE_ERROR = "storage_error"  # ... and of one whose results root is full or read-only
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}
_STORAGE_MESSAGES = ("No space left on device", "Read-only file system", "Disk quota exceeded")


def storage_fault(error: BaseException, where: str | None = None) -> str | None:
    """'<path>: No space left on device' when `error` (or what caused it) is a full, read-only
    or over-quota disk, else None: a fault no retry can mend while the disk stays as it is.
    `where`: the folder named when the error names no file (pyarrow's do not)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
            named = error.filename2 or error.filename
            if named:  # the file being written, not its temporary name beside it (records.replace_atomically)
                named = re.sub(r"(^|/)\.([^/]+)\.[0-9a-f]{32}\.tmp$", r"\1\2", str(named))
                return f"{named}: {error.strerror}"
        text = " ".join(str(error).split())
        for message in _STORAGE_MESSAGES:
            if message in text:
                return f"{where}: {text[:300]}" if where else text[:300]
        error = error.__cause__ or error.__context__
    return None


def grid_key(trial: TrialConfig) -> str:
    """The whole config as one string: two trials are the same grid point iff their keys are equal."""
    return json.dumps(trial.to_dict(), sort_keys=True)
