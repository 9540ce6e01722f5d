from pathlib import Path

from _common import setup
setup(snakemake)
from editharm.jobs import train_method

train_method(str(Path(snakemake.input.model).parent), snakemake.wildcards.method, snakemake.params.module,
             snakemake.input.hparams, snakemake.input.data, snakemake.params.seed, snakemake.output[0],
             threads=snakemake.threads)
