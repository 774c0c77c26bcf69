"""Reports: turn evaluation results (plain arrays and lists) into metrics, figures and run-folder files.

This package reads results and writes files; it never imports the engine or the CLI.
"""

from __future__ import annotations

from sedensenet.reports.metrics import ClassificationReport, compute_metrics, normalize_confusion_matrix
from sedensenet.reports.plots import (
    InlineFigure,
    curves_figure,
    find_cjk_font,
    plot_confusion_matrix,
    plot_curves,
    plot_gradcam_grid,
    plot_history,
    plot_history_comparison,
    plot_roc,
    plot_se_weights,
    plot_top_losses,
)
from sedensenet.reports.run import (
    HISTORY_COLUMNS,
    RUN_FILES,
    RunDirError,
    check_writable,
    new_run_dir,
    read_history_csv,
    write_classification_table,
    write_history_csv,
    write_metrics,
)

__all__ = [
    "HISTORY_COLUMNS",
    "InlineFigure",
    "RUN_FILES",
    "ClassificationReport",
    "RunDirError",
    "check_writable",
    "compute_metrics",
    "curves_figure",
    "find_cjk_font",
    "new_run_dir",
    "normalize_confusion_matrix",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_gradcam_grid",
    "plot_history",
    "plot_history_comparison",
    "plot_roc",
    "plot_se_weights",
    "plot_top_losses",
    "read_history_csv",
    "write_classification_table",
    "write_history_csv",
    "write_metrics",
]
