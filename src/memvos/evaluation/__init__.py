"""DAVIS semi-supervised evaluation (J, F, Mean/Recall/Decay), equal to the official DAVIS 2017 evaluator.

Main entry points: :func:`evaluate` (a results folder against an annotations folder),
:func:`evaluate_sequence` (in-memory label maps of one sequence), the writers in :mod:`.report`, and the
per-frame metrics :func:`jaccard` and :func:`f_measure`. See ``docs/evaluation.md``.
"""

from memvos.evaluation.evaluator import (
    OBJECT_MODES,
    EvaluationResult,
    GlobalRow,
    ObjectResult,
    default_workers,
    evaluate,
    evaluate_sequence,
    list_frames,
    read_label_map,
)
from memvos.evaluation.metrics import (
    BOUND_TH,
    boundary_tolerance,
    f_measure,
    jaccard,
    seg2bmap,
    temporal_stability,
    temporal_stability_pair,
)
from memvos.evaluation.report import format_table, write_csvs, write_json
from memvos.evaluation.statistics import db_statistics, decay_bin_indices

__all__ = [
    "BOUND_TH",
    "OBJECT_MODES",
    "EvaluationResult",
    "GlobalRow",
    "ObjectResult",
    "boundary_tolerance",
    "db_statistics",
    "decay_bin_indices",
    "default_workers",
    "evaluate",
    "evaluate_sequence",
    "f_measure",
    "format_table",
    "jaccard",
    "list_frames",
    "read_label_map",
    "seg2bmap",
    "temporal_stability",
    "temporal_stability_pair",
    "write_csvs",
    "write_json",
]
