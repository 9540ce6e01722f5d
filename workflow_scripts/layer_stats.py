from pathlib import Path

from _common import setup
setup(snakemake)
from editharm.jobs import layer_stats

w = snakemake.wildcards
layer_stats(str(Path(snakemake.input.model).parent), snakemake.input.corpus, int(w.layer), int(w.tokens),
            snakemake.params.seq_len, snakemake.output[0], threads=snakemake.threads)
