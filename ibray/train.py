"""Transitional: the training loop moved to trainer.py (Trainer), measure.py, optim.py and
run.py (a trial end to end). Kept until every importer uses the new modules."""

from ibray.measure import Measurement, mi_columns  # noqa: F401
from ibray.records import TrialStateError, read_trial_info  # noqa: F401
from ibray.run import (  # noqa: F401
    CHECKPOINT_FILE,
    PROGRESS_EVERY_S,
    TrialSummary,
    find_global_ranges,
    load_checkpoint,
    needs_global_ranges,
    run_resumable,
    run_trial,
    save_checkpoint,
)
from ibray.trainer import Trainer, slot_streams  # noqa: F401
