"""Command line: ``python -m lamb run NOTEBOOK --profile P`` runs a notebook at a profile with papermill;
``python -m lamb train bert|resnet`` trains a recipe (:mod:`lamb.training_cli`).

The executed notebook is written to ``results/<profile>/<name>.ipynb``; notebooks that save result files
(JSON) write them beside it, in ``results/<profile>/`` (they read the directory from ``LAMB_RESULTS_DIR``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lamb.profiles import PROFILES, check_profile


def run_notebook(notebook: str | os.PathLike, profile: str, output_dir: str | os.PathLike = "results",
                 parameters: dict | None = None, kernel_name: str = "python3") -> Path:
    """Execute ``notebook`` at ``profile``; return the path of the executed copy."""
    import papermill

    check_profile(profile)
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"no notebook at {notebook}")
    out_dir = Path(output_dir) / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    env_before = {k: os.environ.get(k) for k in ("LAMB_PROFILE", "LAMB_RESULTS_DIR")}
    os.environ["LAMB_PROFILE"] = profile
    os.environ["LAMB_RESULTS_DIR"] = str(out_dir.resolve())
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters={"PROFILE": profile, **(parameters or {})},
            kernel_name=kernel_name, cwd=str(notebook.parent.resolve()), progress_bar=False,
        )
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lamb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a notebook at a profile with papermill")
    run.add_argument("notebook", help="path of the .ipynb to run")
    run.add_argument("--profile", default="cpu", choices=PROFILES)
    run.add_argument("--output-dir", default="results", help="where results/<profile>/ is made")
    from lamb import training_cli  # `train`: the BERT/ResNet recipes as a command (lamb/training_cli.py)

    training_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "train":
        return training_cli.main(args)
    output = run_notebook(args.notebook, args.profile, args.output_dir)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
