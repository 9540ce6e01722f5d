from _common import model_dir, setup
setup(snakemake)
from editharm.jobs import weight_stats

s = snakemake.params.settings
weight_stats(model_dir=model_dir(snakemake), tensors=snakemake.input.tensors,
             thresholds=s["thresholds"], quantiles=s["quantiles"], heatmap_size=s["heatmap_size"],
             out_json=snakemake.output.stats, out_heatmaps=snakemake.output.heatmaps)
