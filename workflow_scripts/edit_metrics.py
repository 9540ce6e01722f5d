from pathlib import Path

from _common import setup
setup(snakemake)
from editharm.jobs import edit_metrics

i, p = snakemake.input, snakemake.params
edit_metrics(model_dir=str(Path(i.model).parent), editset=i.editset, n=int(snakemake.wildcards.n), tensors=i.tensors,
             meta=i.meta, reference=i.reference, method_module=p.module, trained_dir=p.trained_dir,
             batch_size=p.batch_size, out_path=snakemake.output[0], threads=snakemake.threads)
