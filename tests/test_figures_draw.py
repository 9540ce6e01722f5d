"""The drawing primitives: what a reader sees on the axes."""

import pandas as pd

from editharm.figures.draw import PERPLEXITY_LABEL, SCORE_LABEL, facet_lines


def test_perplexity_panels_get_their_own_label_and_a_log_axis():
    """Downstream panels mix 0–1 scores with perplexities; a perplexity must not sit under "score (0–1)",
    and a collapsed one (1e50, as KN reaches) must not flatten the healthy values on a linear axis."""
    rows = []
    for method, lam, ppl in (("ROME", (0.24, 0.23), (43.9, 50.5)), ("KN", (0.24, 0.0), (43.9, 1.6e53))):
        for edits, acc, p in zip((0, 10), lam, ppl):
            rows += [dict(method=method, edits=edits, seed=0, panel="LAMBADA: accuracy", value=acc),
                     dict(method=method, edits=edits, seed=0, panel="WikiText: word perplexity", value=p)]
    fig = facet_lines(pd.DataFrame(rows), x="edits", hue="method", col="panel",
                      col_order=["LAMBADA: accuracy", "WikiText: word perplexity"])
    accuracy, perplexity = fig.axes[:2]
    assert accuracy.get_ylabel() == SCORE_LABEL and accuracy.get_yscale() == "linear"
    assert perplexity.get_ylabel() == PERPLEXITY_LABEL and perplexity.get_yscale() == "log"
