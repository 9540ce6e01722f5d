from pathlib import Path

from _common import setup
setup(snakemake)
from editharm.jobs import render_notebook

o = snakemake.output
render_notebook(snakemake.input.notebook, o.notebook, o.html,
                parameters={"tables_dir": str(Path(snakemake.input.tables[0]).parent.resolve()),
                            "out_dir": str(Path(o.notebook).parent.resolve())})
