"""Reports: turn evaluation results (plain arrays and lists) into metrics, figures and run-folder files.

This package reads results and writes files; it never imports the engine or the CLI.
"""

from __future__ import annotations

from sedensenet.config import THRESHOLD_RULES, ThresholdRule, parse_threshold
from sedensenet.reports.calibration import (
    apply_label_temperatures,
    apply_temperature,
    expected_calibration_error,
    fit_label_temperatures,
    fit_temperature,
    negative_log_likelihood,
)
from sedensenet.reports.clinical import (
    binary_metrics,
    bootstrap_intervals,
    choose_threshold,
    decide_binary,
    positive_index,
)
from sedensenet.reports.diagnostic_plots import plot_confusion_matrix, plot_pr, plot_reliability, plot_roc
from sedensenet.reports.explain_plots import plot_gradcam_grid, plot_se_weights, plot_top_losses
from sedensenet.reports.figures import InlineFigure, find_cjk_font
from sedensenet.reports.metrics import ClassificationReport, compute_metrics, normalize_confusion_matrix
from sedensenet.reports.multilabel import (
    MultiLabelReport,
    binary_accuracy,
    choose_label_thresholds,
    epoch_scores,
    multilabel_report,
    plot_label_curves,
    write_per_label_csv,
)
from sedensenet.reports.plots import curves_figure, plot_curves, plot_history, plot_history_comparison
from sedensenet.reports.run import (
    HISTORY_COLUMNS,
    RUN_FILES,
    RunDirError,
    check_writable,
    new_run_dir,
    read_history_csv,
    read_predictions,
    write_classification_table,
    write_history_csv,
    write_metrics,
    write_predictions,
)

__all__ = [
    "HISTORY_COLUMNS",
    "InlineFigure",
    "RUN_FILES",
    "THRESHOLD_RULES",
    "ClassificationReport",
    "MultiLabelReport",
    "RunDirError",
    "ThresholdRule",
    "apply_label_temperatures",
    "apply_temperature",
    "binary_accuracy",
    "binary_metrics",
    "bootstrap_intervals",
    "check_writable",
    "choose_label_thresholds",
    "choose_threshold",
    "compute_metrics",
    "curves_figure",
    "decide_binary",
    "epoch_scores",
    "expected_calibration_error",
    "fit_label_temperatures",
    "fit_temperature",
    "multilabel_report",
    "negative_log_likelihood",
    "parse_threshold",
    "plot_label_curves",
    "plot_pr",
    "plot_reliability",
    "positive_index",
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
    "read_predictions",
    "write_classification_table",
    "write_history_csv",
    "write_metrics",
    "write_per_label_csv",
    "write_predictions",
]
