"""``tje``: the command line. Parses arguments and calls one library function per command.

    tje demo                                  the whole pipeline on the built-in default
    tje configs                               the packaged run configs, one line each
    tje run --config NAME_OR_FILE             a run (resumes; key=value overrides)
    tje report RUN_DIR                        calibration, early-stopping evaluation, plots
    tje compare RUN_DIR RUN_DIR ... --out D   several models' calibration side by side
    tje view RUN_DIR                          the token-level trace viewer (one HTML file)
    tje calibrate RUN_DIR                     the thresholds as JSON (reconstructions named)
    tje merge RUN_DIR                         join the shards of a data-parallel run
    tje export RUN_DIR --csv PATH             the records as a table (one row per problem and step)
    tje regrade RUN_DIR                       grade the recorded answers again (regrades.jsonl)

Errors print one line on stderr (``tje: error: ...``) and exit with code 2; ``--debug`` (before or
after the command) shows the traceback instead. Ctrl-C prints one line (for ``run`` and ``demo``,
how many problems are on disk) and exits with 130; a closed standard output (``| head``) ends
quietly with 141, as a command killed by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from .columns import DEFAULT_COLUMN
from .config import load_run_config, packaged_configs
from .errors import USER_ERRORS, RunDirError

DEMO_CONFIG = "demo"  # a packaged run config (tje_hf/configs/runs/demo.yaml)

EPILOG = """Configs: `--config` takes a YAML file or the name of a packaged run config (`tje configs`
lists them), e.g. gpt-oss-20b_aime24. Overrides: any config field as key.path=value (YAML values):
  tje run --config gpt-oss-20b_aime24 decode.max_new_tokens=2048 batch_size=4
Data parallel: one process per GPU, each on a disjoint shard of problems; rank 0 merges them when
every shard is done (no collective: shards may end hours apart; resume works per shard):
  accelerate launch --multi_gpu --num_processes N -m tje_hf.cli run --config ..."""


def _distributed() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) under ``accelerate launch`` / torchrun, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _quiet_progress(args: argparse.Namespace) -> None:
    """``--no-progress``: also silence transformers' own bars (weights loading); run/demo only, since
    importing transformers costs seconds and the other commands never load a model."""
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def cmd_run(args: argparse.Namespace) -> int:
    limit = [f"task.limit={args.limit}"] if args.limit is not None else []
    # a bad config fails before torch loads
    cfg = load_run_config(args.config, limit + args.set + args.overrides)
    args.out_dir = cfg.out_dir  # for the line a Ctrl-C prints
    _quiet_progress(args)
    from .runner import run, run_data_parallel

    dist = _distributed()
    if dist is None:
        summary = run(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    else:
        rank, world, local = dist
        summary = run_data_parallel(cfg, rank, world, local, overwrite=args.overwrite, progress=not args.no_progress)
        if summary is None:  # not rank 0: its shard is on disk, rank 0 merges
            return 0
    print(summary.table())
    print(f"\nrecords: {Path(cfg.out_dir) / 'records.jsonl'} ({summary.n_problems} problems, "
          f"{summary.n_new} new, {summary.wall_time_s:.0f} s)")
    print(_next_commands(cfg.out_dir))
    return 0


def _next_commands(run_dir: str | Path) -> str:
    """What to run on a finished run directory, ready to paste."""
    import shlex

    quoted = shlex.quote(str(run_dir))
    return (f"next:    tje report {quoted}      # calibration tables and plots\n"
            f"         tje view {quoted}        # token-level trace viewer\n"
            f"         tje export {quoted} --csv {shlex.quote(str(Path(run_dir) / 'records.csv'))}")


def cmd_demo(args: argparse.Namespace) -> int:
    overrides = [f"out_dir={args.out}"]
    for flag, key in (("problems", "task.size"), ("steps", "refine.steps"),
                      ("max_new_tokens", "decode.max_new_tokens")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    cfg = load_run_config(DEMO_CONFIG, overrides + args.set)
    args.out_dir = cfg.out_dir  # for the line a Ctrl-C prints
    _quiet_progress(args)
    from .analysis.report import write_report
    from .runner import run
    from .viewer import write_viewer

    print(f"tje demo: {cfg.task.size} problems of the built-in '{cfg.task.name}' task, "
          f"{cfg.refine.steps} refinement steps each, model {cfg.model.name_or_path}", flush=True)
    summary = run(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    print(summary.table())
    report = write_report(cfg.out_dir)
    viewer = write_viewer(cfg.out_dir)
    print(f"\nrun:     {cfg.out_dir} ({summary.n_problems} problems, {summary.wall_time_s:.0f} s)")
    print(f"report:  {report}")
    print(f"viewer:  {viewer}")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    rows = [("name", "model", "task", "steps", "max new tokens")]
    for name in packaged_configs("runs"):
        cfg = load_run_config(name)
        rows.append((name, cfg.model.name_or_path, cfg.task.name, str(cfg.refine.steps),
                     str(cfg.decode.max_new_tokens)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _run_dir(path: str | Path, *, records: bool = True) -> Path:
    """``path`` as an existing run directory, with finished records unless ``records`` is False;
    RunDirError (one line, exit 2) otherwise, before anything is read or written there."""
    from .records import RECORDS

    run = Path(path)
    if not run.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    if records and not ((run / RECORDS).is_file() and (run / RECORDS).stat().st_size > 0):
        raise RunDirError(f"{path}: no {RECORDS}, or an empty one "
                          "(not a run directory, or no problem finished yet)")
    return run


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import write_report

    print(write_report(_run_dir(args.run_dir), args.out, signal=args.signal, segment=args.segment))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .analysis.report import compare_runs

    runs = [_run_dir(d) for d in args.run_dirs]
    print(compare_runs(runs, args.out, signal=args.signal, segment=args.segment))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from .viewer import write_viewer

    print(write_viewer(_run_dir(args.run_dir), args.out, signal=args.signal, problems=args.problem or None,
                       max_alternatives=args.max_alternatives))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .analysis.calibration import calibrate_records
    from .records import read_records, with_steps

    cal = calibrate_records(with_steps(read_records(_run_dir(args.run_dir))), signal=args.signal,
                            segment=args.segment, step=args.step)
    print(json.dumps(cal.to_json(), indent=2))
    return 0


def cmd_regrade(args: argparse.Namespace) -> int:
    from .records import RECORDS, REGRADES
    from .regrade import regrade

    summary = regrade(_run_dir(args.run_dir))
    print(summary.table())
    print(f"\n{summary.n_changed} step grades changed ({summary.n_problems} problems, grader {summary.grader}); "
          f"appended to {summary.run_dir / REGRADES} ({RECORDS} unchanged)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .runner import merge_shards, summarize

    merge_shards(_run_dir(args.run_dir, records=False))
    print(summarize(args.run_dir).table())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import to_dataframe, write_csv, write_parquet
    from .records import TABLE_CSV

    run = _run_dir(args.run_dir)
    targets = [("csv", args.csv), ("parquet", args.parquet)]
    if args.csv is None and args.parquet is None:
        targets = [("csv", run / TABLE_CSV)]
    df = to_dataframe(run, text=args.text)
    shape = f"{len(df)} rows (problem x step), {df.shape[1]} columns"
    log = sys.stderr if args.csv == "-" else sys.stdout  # the table itself may be on stdout
    for kind, path in targets:
        if path is None:
            continue
        written = write_csv(df, path) if kind == "csv" else write_parquet(df, path)
        if written is not None:
            print(f"{written}: {shape}", file=log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tje", description="Think Just Enough: entropy-gated self-refinement with Hugging Face Transformers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (default: one line on stderr, exit code 2)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str, **kwargs) -> argparse.ArgumentParser:
        # the summary is both the line of `tje --help` and the description of `tje NAME --help`
        p = sub.add_parser(name, help=summary, description=summary, **kwargs)
        # also after the command (`tje run ... --debug`); SUPPRESS keeps a top-level --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return p

    def signal_args(p):
        p.add_argument("--signal", default=DEFAULT_COLUMN,
                       help=f"signal column (default {DEFAULT_COLUMN}, bits; higher = more uncertain)")
        p.add_argument("--segment", default="all", choices=["all", "reasoning", "answer"],
                       help="which tokens the step mean covers (default all)")

    p = command("run", "run a model over a task with the refinement loop (resumable)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help="a run YAML file, or the name of a packaged run config (see `tje configs`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more overrides")
    p.add_argument("--limit", type=_int_at_least(1), default=None, metavar="N",
                   help="only the first N problems of the task (same as task.limit=N)")
    p.add_argument("--overwrite", action="store_true",
                   help="start an existing run directory over (removes its records, and the report, viewer and "
                        "tables made from them; nothing else)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = command("demo", "the whole pipeline on the built-in default model and task")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--problems", type=int, default=None, help="number of problems (default 64)")
    p.add_argument("--steps", type=int, default=None, help="refinement steps (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="new tokens a step at most (default 48)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--overwrite", action="store_true",
                   help="start over instead of resuming (removes the records, and the report, viewer and tables "
                        "made from them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = command("configs", "list the packaged run configs (model, task, steps, max new tokens)")
    p.set_defaults(func=cmd_configs)

    p = command("report", "write RUN_DIR/report/report.md with tables and plots")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/report)")
    signal_args(p)
    p.set_defaults(func=cmd_report)

    p = command("compare", "compare several runs' calibration (which model knows when it knows); "
                           "a gate run against an all-steps run of the same problems")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, help="output directory")
    signal_args(p)
    p.set_defaults(func=cmd_compare)

    p = command("view", "write the token-level trace viewer (self-contained HTML)")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output file (default RUN_DIR/viewer.html)")
    p.add_argument("--problem", action="append", default=[], help="only these problem ids (repeatable)")
    p.add_argument("--signal", default=DEFAULT_COLUMN, help=f"the signal that colours tokens (default {DEFAULT_COLUMN})")
    p.add_argument("--max-alternatives", type=_int_at_least(0), default=None, metavar="N",
                   help="embed at most N alternatives a token (default: all recorded; fewer = a smaller file)")
    p.set_defaults(func=cmd_view)

    p = command("calibrate", "print the thresholds computed from a run's step-1 records "
                             "(tau_universal is a reconstruction: see \"reconstructed\")")
    p.add_argument("run_dir")
    p.add_argument("--step", type=int, default=1)
    signal_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = command("merge", "merge the shards of a data-parallel run into records.jsonl")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_merge)

    p = command("regrade", "grade a run's recorded answers again with the current grader (no generation); "
                           "the new grades go to RUN_DIR/regrades.jsonl, the originals are kept")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_regrade)

    p = command("export", "write a run's records as a table: one row per problem and step, every signal "
                          "mean a column (segment/column)")
    p.add_argument("run_dir")
    p.add_argument("--csv", default=None, metavar="PATH",
                   help="write a CSV file ('-': standard output; default, with neither: RUN_DIR/records.csv)")
    p.add_argument("--parquet", default=None, metavar="PATH", help="write a parquet file (needs pyarrow)")
    p.add_argument("--text", action="store_true", help="also the generated text of every step")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone before the last bytes is a BrokenPipeError below
        return code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"tje: {_interrupted_line(args)}", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:  # the reader of stdout went away (`tje export RUN --csv - | head -1`)
        _drop_stdout()
        return 128 + signal.SIGPIPE
    except Exception as exc:  # every error: one line and exit code 2, the traceback with --debug
        if args.debug:
            raise
        print(f"tje: error: {_error_line(exc, args.command)}", file=sys.stderr)
        return 2


def _interrupted_line(args: argparse.Namespace) -> str:
    """What a Ctrl-C leaves: the run's problems on disk (every record was written whole, and a
    resume cuts whatever a write left half done), or just that the command stopped."""
    out_dir = getattr(args, "out_dir", None)
    if out_dir is None:
        return "interrupted; run the same command again"
    from .records import problems_on_disk

    try:
        n = problems_on_disk(out_dir)
    except (RunDirError, OSError):
        return "interrupted; run the same command to resume"
    return f"interrupted: {n} problems on disk; run the same command to resume"


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not fail again
    on the closed pipe (and print "Exception ignored")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (captured)
        pass


# Errors whose message is the whole story: a user's input or environment, said in one line.
FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
# Commands that read a run directory: a ValueError from the analysis there is about the run or the
# options (a signal or step that was not recorded, an empty run), not a bug.
ANALYSIS_COMMANDS = ("report", "compare", "calibrate", "view", "export")


def _error_line(exc: BaseException, command: str) -> str:
    """``exc`` as the one line ``tje`` prints: the message of a known error; the type, message and
    place of an unexpected one, with how to see its traceback."""
    if isinstance(exc, OSError) and exc.errno in DEVICE_FULL:
        return _device_full_line(exc)
    message = " ".join(str(exc).split()) or type(exc).__name__
    known = isinstance(exc, USER_ERRORS + FILE_ERRORS + (ImportError,)) or (
        isinstance(exc, ValueError) and command in ANALYSIS_COMMANDS)
    if known:
        return message
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return (f"unexpected {type(exc).__name__}{where}: {message} "
            f"(`tje --debug {command} ...` shows the traceback)")


# A device that cannot take a write: what it is, and what to do about it.
DEVICE_FULL = {errno.ENOSPC: ("no space left on {mount}", "free space"),
               errno.EDQUOT: ("the disk quota is exceeded on {mount}", "free space"),
               errno.EROFS: ("{mount} is mounted read-only", "make it writable")}


def _device_full_line(exc: OSError) -> str:
    """A full disk, an exceeded quota or a read-only mount, with the file being written and the
    mount point it lives on. Nothing written is lost: records and regrades are appended whole
    line by line (a torn last line is cut when the run is opened again), other files are
    replaced atomically."""
    what, todo = DEVICE_FULL[exc.errno]
    mount = _mount_point(exc.filename) if exc.filename else "the device"
    file = exc.filename or "the command's output"
    return (f"{what.format(mount=mount)} while writing {file}; nothing written was lost; {todo} and run the same "
            "command")


def _mount_point(path: str | os.PathLike) -> str:
    """The mount point of the file system that holds ``path`` (symbolic links followed)."""
    where = Path(path).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    while not os.path.ismount(where):
        where = where.parent
    return str(where)


def _int_at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum``, else a usage error that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
