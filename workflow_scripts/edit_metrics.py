from _common import model_dir, setup
setup(snakemake)
from editharm.jobs import edit_metrics

i, p = snakemake.input, snakemake.params
edit_metrics(model_dir=model_dir(snakemake), editset=i.editset, n=int(snakemake.wildcards.n), tensors=i.tensors,
             meta=i.meta, reference=i.reference, method_module=p.module, trained_dir=p.trained_dir,
             batch_size=p.batch_size, out_path=snakemake.output[0], threads=snakemake.threads)
