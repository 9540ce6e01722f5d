"""Shared by the thin rule scripts: logging to the rule's log, and the model folder a rule reads."""

import logging
import sys
from pathlib import Path


def setup(snakemake) -> None:
    if snakemake.log:
        stream = open(snakemake.log[0], "a", buffering=1)
        sys.stderr = stream
        sys.stdout = stream
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")


def model_dir(snakemake) -> str:
    """The model folder (plan.Paths.model_dir) of a rule whose `model` input is the folder's
    manifest (Paths.model_manifest): read from the input, so the job opens exactly what the
    DAG made it wait for."""
    return str(Path(snakemake.input.model).parent)
