from _common import setup
setup(snakemake)
from editharm.jobs import prepare_dataset

prepare_dataset(snakemake.params.spec, snakemake.input[0], snakemake.output[0])
