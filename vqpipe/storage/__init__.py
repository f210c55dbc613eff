"""The storage layer: a quality table as one object (:class:`QualityTable`) — committed parts,
atomic fenced commits, the lock, the job record, quarantine, staging and swap, the repeats
pass. It imports nothing from the pipeline or the commands."""

from vqpipe.storage.lock import Fence, LostLockError, TableLock
from vqpipe.storage.table import QualityTable, read_quality_table

__all__ = ["Fence", "LostLockError", "QualityTable", "TableLock", "read_quality_table"]
