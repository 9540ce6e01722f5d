from pathlib import Path

from _common import model_dir, setup
setup(snakemake)
from editharm.jobs import edit_segment

w, i, o, p = snakemake.wildcards, snakemake.input, snakemake.output, snakemake.params
edit_segment(
    model_dir=model_dir(snakemake), editset=i.editset, n_prev=p.n_prev, n=int(w.n), method_name=w.method,
    module=p.module, hparams_path=i.hparams, regulariser=w.reg, seed=int(w.seed), batch_size=p.batch_size,
    stats_paths={int(k): v for k, v in p.stats.items()},
    prev_tensors=i.get("prev_tensors"), prev_meta=i.get("prev_meta"),
    trained_dir=str(Path(i.trained).parent) if "trained" in i.keys() else None,
    out_tensors=o.tensors, out_meta=o.meta, out_log=o.log, threads=snakemake.threads,
)
