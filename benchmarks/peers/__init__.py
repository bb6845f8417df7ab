"""Test-time adaptation peers of DynTTA, small enough to read in one sitting (issue 13 section 4).

Each module has one job: :mod:`.base` (the adapter interface), :mod:`.flip` (flip TTA through ttach),
:mod:`.norm` (BatchNorm-statistics adaptation), :mod:`.tent` (TENT), :mod:`.memo` (MEMO), :mod:`.stream`
(the corrupted test stream and its batches per setting), :mod:`.cache` (resumable per-unit results) and
:mod:`.table` (the Markdown table). ``benchmarks/tta_peers.py`` runs them.
"""

from benchmarks.peers.base import Adapter, Stateless
from benchmarks.peers.flip import flip_tta
from benchmarks.peers.memo import Memo
from benchmarks.peers.norm import BatchNormAdapt, batch_norm_layers, use_batch_statistics
from benchmarks.peers.tent import Tent

__all__ = [
    "Adapter",
    "BatchNormAdapt",
    "Memo",
    "Stateless",
    "Tent",
    "batch_norm_layers",
    "flip_tta",
    "use_batch_statistics",
]
