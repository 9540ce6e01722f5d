from _common import model_dir, setup
setup(snakemake)
from editharm.jobs import locality_reference

locality_reference(model_dir(snakemake), snakemake.input.editset, snakemake.params.n,
                   snakemake.output[0], threads=snakemake.threads)
