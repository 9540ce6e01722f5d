from _common import setup
setup(snakemake)
from editharm.jobs import fetch_model

fetch_model(snakemake.params.source, snakemake.output[0], config=snakemake.config, model=snakemake.wildcards.model)
