from _common import setup
setup(snakemake)
from editharm.jobs import download_dataset

download_dataset(snakemake.wildcards.dataset, snakemake.params.spec, snakemake.params.mirror, snakemake.output[0])
