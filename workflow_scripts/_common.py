"""Shared by the thin rule scripts: send the library's logging and progress to the rule's log."""

import logging
import sys


def setup(snakemake) -> None:
    if snakemake.log:
        stream = open(snakemake.log[0], "a", buffering=1)
        sys.stderr = stream
        sys.stdout = stream
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
