from _common import setup
setup(snakemake)
from editharm.jobs import sample_edits

sample_edits(snakemake.input[0], snakemake.params.n, int(snakemake.wildcards.seed), snakemake.output[0])
