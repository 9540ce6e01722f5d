# Serves score_task (a checkpoint) and score_base (the unedited model, no checkpoint inputs).
from _common import model_dir, setup
setup(snakemake)
from editharm.jobs import score_task

i, p = snakemake.input, snakemake.params
score_task(model_dir=model_dir(snakemake), task_name=snakemake.wildcards.task, data=i.data,
           shots=i.get("shots"), n=p.n, task_seed=p.task_seed, tensors=i.get("tensors"), meta=i.get("meta"),
           method_module=p.get("module"), trained_dir=p.get("trained_dir"), batch_size=p.batch_size,
           out_path=snakemake.output[0], threads=snakemake.threads)
