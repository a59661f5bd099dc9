"""Command line: run a notebook at a profile (papermill), dry-run it, plan it, export its results; train the
book's BERT and ResNet recipes as a command (``python -m lamb train bert|resnet``, :mod:`lamb.training_cli`).

::

    python -m lamb run notebooks/training_harness.ipynb --profile cpu            # results/cpu/...
    python -m lamb run notebooks/training_harness.ipynb --profile gpu --dry-run  # 2 steps per loop, any device
    python -m lamb run notebooks/training_harness.ipynb --profile gpu --plan     # print the plan, run nothing
    python -m lamb run notebooks/training_harness.ipynb --profile gpu --export   # run, then export
    python -m lamb plan training_harness --profile gpu --profile tpu             # plans of several profiles
    python -m lamb export training_harness --profile gpu                         # export a finished run

The executed notebook is written to ``results/<profile>/<name>.ipynb`` (``results/dry-run/<profile>/`` for a
dry run); the notebook writes its result files in ``results/<profile>/<name>/`` (it reads the directory from
``LAMB_RESULTS_DIR``, see :func:`lamb.notebook.results_dir`), where ``run`` also writes ``run.json`` (profile,
dry run or not, start, wall time). ``--export`` copies the compact results into the package
(:mod:`lamb.exports`). ``run`` prints the notebook's plan (:mod:`lamb.plan`) before it executes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lamb.profiles import DRY_RUN_ENV, DRY_RUN_STEPS, PROFILES, check_profile


def run_notebook(notebook: str | os.PathLike, profile: str, output_dir: str | os.PathLike = "results",
                 parameters: dict | None = None, kernel_name: str = "python3", *, dry_run: bool = False,
                 extra_env: dict | None = None, execution_timeout: int | None = None) -> Path:
    """Execute ``notebook`` at ``profile`` (a dry run with ``dry_run``; ``execution_timeout``: seconds per cell,
    default none); return the path of the executed copy."""
    import datetime
    import json
    import time

    import papermill

    check_profile(profile)
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"no notebook at {notebook}")
    out_dir = Path(output_dir) / "dry-run" / profile if dry_run else Path(output_dir) / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    results = out_dir / notebook.stem
    set_env = {"LAMB_PROFILE": profile, "LAMB_RESULTS_DIR": str(out_dir.resolve()), **(extra_env or {})}
    if dry_run:
        set_env[DRY_RUN_ENV] = "1"
    env_before = {k: os.environ.get(k) for k in (*set_env, DRY_RUN_ENV)}
    os.environ.update(set_env)
    if not dry_run:
        os.environ.pop(DRY_RUN_ENV, None)  # a run without --dry-run is a real run, whatever the shell says
    if results.is_dir():  # stale files of an earlier run must not be exported with this one's
        for stale in ("run.json", "environment.json", "dry_run_skipped.json"):
            (results / stale).unlink(missing_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters={"PROFILE": profile, **(parameters or {})},
            kernel_name=kernel_name, cwd=str(notebook.parent.resolve()), progress_bar=False,
            execution_timeout=execution_timeout,
        )
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    results.mkdir(parents=True, exist_ok=True)
    (results / "run.json").write_text(json.dumps(
        {"notebook": notebook.stem, "profile": profile, "dry_run": dry_run,
         "started": started.isoformat(timespec="seconds"), "wall_time_s": time.perf_counter() - t0,
         "executed_notebook": str(output)}, indent=1))
    return output


def _print_plan(notebook: str, profile_names, measure: bool) -> None:
    from lamb import plan

    for profile in profile_names:
        try:
            print(plan.build(notebook, profile).format(measure=measure))
        except plan.NoPlan as e:
            print(f"(no plan: {e})")
        print()


def _declares_plan(notebook: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"lamb.notebooks.{notebook}") is not None


def main(argv: list[str] | None = None) -> int:
    from lamb import training_cli  # `train`: the BERT/ResNet recipes as a command (lamb/training_cli.py)

    parser = argparse.ArgumentParser(prog=training_cli.prog_name(), description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a notebook at a profile with papermill")
    run.add_argument("notebook", help="path of the .ipynb to run")
    run.add_argument("--profile", default="cpu", choices=PROFILES)
    run.add_argument("--output-dir", default="results", help="where results/<profile>/ is made")
    run.add_argument("--dry-run", action="store_true",
                     help=f"every training loop stops after {DRY_RUN_STEPS} steps, every sweep trains one rate "
                          "per optimizer, at the profile's shapes, on whatever device is present")
    run.add_argument("--plan", action="store_true",
                     help="print the plan (runs, steps, examples, FLOPs, time from a measured step) and exit")
    run.add_argument("--no-plan", action="store_true", help="do not print the plan before running")
    run.add_argument("--export", action="store_true",
                     help="after the run, export its compact results to lamb/results/<profile>/<notebook>.json")
    plan_p = sub.add_parser("plan", help="print the plan of notebooks at profiles")
    plan_p.add_argument("notebooks", nargs="+", help="notebook names or paths")
    plan_p.add_argument("--profile", action="append", choices=PROFILES, help="repeat for several (default: gpu)")
    plan_p.add_argument("--no-measure", action="store_true", help="FLOPs only, no step timed")
    export_p = sub.add_parser("export", help="export a finished run's results (see lamb.exports)")
    export_p.add_argument("notebook")
    export_p.add_argument("--profile", required=True, choices=PROFILES)
    export_p.add_argument("--output-dir", default="results", help="the run's results/ directory")
    export_p.add_argument("--destination", default=None, help="default: the package's lamb/results")
    training_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "train":
        return training_cli.main(args)
    if args.command == "plan":
        for nb in args.notebooks:
            _print_plan(Path(nb).stem, args.profile or ["gpu"], measure=not args.no_measure)
        return 0
    if args.command == "export":
        from lamb import exports

        name = Path(args.notebook).stem
        print(f"wrote {exports.export(name, args.profile, source=Path(args.output_dir) / args.profile / name, destination=args.destination)}")
        return 0
    if args.dry_run and args.export:
        parser.error("--export needs a real run: a dry run's numbers are not results")
    if args.plan:
        _print_plan(Path(args.notebook).stem, [args.profile], measure=True)
        return 0
    if not args.no_plan and not _declares_plan(Path(args.notebook).stem):
        print(f"(no plan: {Path(args.notebook).stem} declares none in lamb/notebooks/, see lamb.plan)")
    elif not args.no_plan:
        # FLOPs only, in a CPU-only subprocess: JAX in this process would take the GPU memory or the TPU
        # that the notebook's kernel needs.
        import subprocess

        subprocess.run([sys.executable, "-m", "lamb", "plan", Path(args.notebook).stem, "--profile", args.profile,
                        "--no-measure"], env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
        if args.dry_run:
            print(f"(a dry run runs {DRY_RUN_STEPS} steps per training loop and one rate per sweep, not the above)")
        sys.stdout.flush()
    output = run_notebook(args.notebook, args.profile, args.output_dir, dry_run=args.dry_run)
    print(f"wrote {output}")
    if args.export:
        from lamb import exports

        name = Path(args.notebook).stem
        print(f"wrote {exports.export(name, args.profile, source=Path(args.output_dir) / args.profile / name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
