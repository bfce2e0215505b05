"""`python -m services.pacs_sim [options]`: the same command as `axiom pacs-sim`."""

import typer

from services.cli.pacs_sim_cmd import pacs_sim

if __name__ == "__main__":
    typer.run(pacs_sim)
