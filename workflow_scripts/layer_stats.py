from _common import model_dir, setup
setup(snakemake)
from editharm.jobs import layer_stats

w = snakemake.wildcards
layer_stats(model_dir(snakemake), snakemake.input.corpus, int(w.layer), int(w.tokens),
            snakemake.params.seq_len, snakemake.output[0], threads=snakemake.threads)
