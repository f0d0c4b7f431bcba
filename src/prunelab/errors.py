"""User-facing errors: the CLI prints their message as one line and exits with status 2."""


class PrunelabError(Exception):
    """A problem the user can fix (bad path, bad number, wrong checkpoint, corrupt file)."""


class DataError(PrunelabError):
    """The data set is missing, in an unknown layout, or corrupt."""


class CheckpointError(PrunelabError):
    """A checkpoint is unreadable, corrupt, or does not fit the model."""


class PlanError(PrunelabError):
    """A pruning plan names unknown layers or asks for an impossible sparsity."""


class StoredTimingsError(PlanError):
    """Timings stored by an earlier latency plan cannot stand in for this plan's (another
    model, batch size, threads or repetitions, or a damaged log)."""


class RecipeError(PrunelabError):
    """A recipe file is malformed: names the file, the key and what was expected."""
