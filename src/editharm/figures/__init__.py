"""The papers' figures from the tidy tables: data selection, plots, placeholders, index page.

The notebooks in notebooks/ are thin: each does `from editharm import figures as F`, loads
the tables, calls one figure function and `publish`es its `FigureResult`. One concept per
module, every public name re-exported here:

  data      the tables, sort orders, labels, headline metrics, shared row selections
  models    chat flag, base model and size of a model
  style     backend, theme, palette, markers, line styles
  draw      facet_lines, facet_bars, table_figure, placeholder_figure
  findings  each score's change from the unedited model; the measured finding and its criterion
  result    FigureResult (with `finding`, `agrees`), publish (PNG, CSV, JSON), figure_versions
  gu2024    Gu et al. 2024's figures and table, and PAPER_FINDINGS (what the paper found per figure)
  li2024    Li et al. 2024's figures, and PAPER_FINDINGS
  index     write_index (results/figures/index.html, with the findings table at the top)

A figure job's code fingerprint (editharm/codehash.py) covers the definitions its notebook
reaches through `F.<name>`: a figure's own function, the helpers it calls, and the module-level
code that importing this package runs, which includes each figure module's imports (so a
helper of data, draw, result, style or models that any figure imports counts for every
figure). This module only binds names, and `FIGURES` is code only where it is used, so that
editing one figure's function, or a helper in its paper's module, reruns that figure alone.
"""

from .data import (COLUMNS, GU_TASKS, HEADLINE_METRICS, LI_TASKS, METHOD_LABELS, METHOD_ORDER, METRIC_LABELS,
                   TABLES, TASK_LABELS, headline_metric, headline_scores, load_tables, method_key, method_label,
                   method_specs, regulariser_key, task_key, task_label)
from .draw import EDITS_LABEL, SCORE_LABEL, facet_bars, facet_lines, placeholder_figure, table_figure
from .gu2024 import (EDITING_METRICS, GU, GU_REGULARISERS, gu_batch_sequential, gu_fig3, gu_fig4, gu_fig5, gu_fig7,
                     gu_fig8, gu_table1, weight_change_table)
from .index import OVERVIEW, write_index
from .li2024 import (ABILITY_CATEGORIES, LI, SAFETY_METRICS, li_fig2, li_fig3, li_fig4, li_fig5, li_fig6,
                     relative_to_unedited)
from .models import count_parameters, human_count, is_chat_model, model_family, model_info
from .result import FigureResult, figure_versions, publish
from .style import LINESTYLES, MARKERS, palette, setup_style

# name -> (function, paper, what it shows); the rule in rules/figures.smk runs one notebook per name.
FIGURES = {
    "gu_fig3": (gu_fig3, GU, "downstream scores vs number of sequential instance edits, per method"),
    "gu_fig4": (gu_fig4, GU, "downstream scores vs batch size, batch-single editing"),
    "gu_batch_sequential": (gu_batch_sequential, GU, "downstream scores vs edits made in batches"),
    "gu_table1": (gu_table1, GU, "share of elements over relative-change thresholds, Manhattan distance"),
    "gu_fig5": (gu_fig5, GU, "heat maps of |ΔW|"),
    "gu_fig7": (gu_fig7, GU, "reliability, generalization, locality per regulariser"),
    "gu_fig8": (gu_fig8, GU, "downstream scores vs edits per regulariser"),
    "li_fig2": (li_fig2, LI, "benchmarks vs edits per method"),
    "li_fig3": (li_fig3, LI, "base vs chat model"),
    "li_fig4": (li_fig4, LI, "model scale"),
    "li_fig5": (li_fig5, LI, "abilities by category, relative to the unedited model"),
    "li_fig6": (li_fig6, LI, "safety: TruthfulQA, ToxiGen"),
}

__all__ = [
    "ABILITY_CATEGORIES", "COLUMNS", "EDITING_METRICS", "EDITS_LABEL", "FIGURES", "FigureResult", "GU",
    "GU_REGULARISERS", "GU_TASKS", "HEADLINE_METRICS", "LI", "LINESTYLES", "LI_TASKS", "MARKERS", "METHOD_LABELS",
    "METHOD_ORDER", "METRIC_LABELS", "OVERVIEW", "SAFETY_METRICS", "SCORE_LABEL", "TABLES", "TASK_LABELS",
    "count_parameters", "facet_bars", "facet_lines", "figure_versions", "gu_batch_sequential", "gu_fig3", "gu_fig4",
    "gu_fig5", "gu_fig7", "gu_fig8", "gu_table1", "headline_metric", "headline_scores", "human_count",
    "is_chat_model", "li_fig2", "li_fig3", "li_fig4", "li_fig5", "li_fig6", "load_tables", "method_key",
    "method_label", "method_specs", "model_family", "model_info", "palette", "placeholder_figure", "publish",
    "regulariser_key", "relative_to_unedited", "setup_style", "table_figure", "task_key", "task_label",
    "weight_change_table", "write_index",
]
