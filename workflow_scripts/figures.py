# Rules edit_harm and figure: render a notebook with papermill; rule figures: write index.html.
from pathlib import Path

from _common import setup
setup(snakemake)

inputs = dict(snakemake.input.items())
o = snakemake.output
tables_dir = str(Path(inputs["tables"][0]).parent.resolve())

if snakemake.rule == "figures":
    from editharm.figures import write_index

    write_index(o.index, Path(o.index).parent, snakemake.params.names, snakemake.params.config,
                snakemake.params.config_source, tables_dir=tables_dir)
else:
    from editharm.jobs import render_notebook

    parameters = {"tables_dir": tables_dir, "out_dir": str(Path(o.notebook).parent.resolve())}
    if snakemake.rule == "figure":
        from editharm.figures import model_info

        config = snakemake.params.config
        models = {Path(m).parent.name: Path(m).parent for m in inputs.get("models", [])}
        parameters.update(config=config, model_info=model_info(config, models) if models else {},
                          heatmaps=[str(Path(h).resolve()) for h in inputs.get("heatmaps", [])])
    render_notebook(snakemake.input.notebook, o.notebook, o.html, parameters=parameters)
