from pathlib import Path

from _common import setup
setup(snakemake)
from editharm.jobs import weight_stats

s = snakemake.params.settings
weight_stats(model_dir=str(Path(snakemake.input.model).parent), tensors=snakemake.input.tensors,
             thresholds=s["thresholds"], quantiles=s["quantiles"], heatmap_size=s["heatmap_size"],
             out_json=snakemake.output.stats, out_heatmaps=snakemake.output.heatmaps)
