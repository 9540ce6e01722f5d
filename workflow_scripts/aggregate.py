from _common import setup
setup(snakemake)
from editharm.jobs import aggregate

aggregate(snakemake.params.config, set(snakemake.params.weight_editing), dict(snakemake.output.items()))
