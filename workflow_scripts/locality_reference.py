from pathlib import Path

from _common import setup
setup(snakemake)
from editharm.jobs import locality_reference

locality_reference(str(Path(snakemake.input.model).parent), snakemake.input.editset, snakemake.params.n,
                   snakemake.output[0], threads=snakemake.threads)
