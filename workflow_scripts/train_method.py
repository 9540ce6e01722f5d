from _common import model_dir, setup
setup(snakemake)
from editharm.jobs import train_method

train_method(model_dir(snakemake), snakemake.wildcards.method, snakemake.params.module,
             snakemake.input.hparams, snakemake.input.data, snakemake.params.seed, snakemake.output[0],
             threads=snakemake.threads)
