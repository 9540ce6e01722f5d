from _common import setup
setup(snakemake)
from editharm.jobs import aggregate
from editharm.tables import INPUTS

aggregate(snakemake.params.dirs, {name: list(snakemake.input[name]) for name in INPUTS}, dict(snakemake.output.items()))
