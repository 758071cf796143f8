"""`python -m hw2.report <run dir | sweep dir | log dir> [--group-by k1,k2] [--no-samples]`."""

from __future__ import annotations

import argparse

from hw2.report import build_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hw2.report", description=__doc__)
    parser.add_argument("directory", help="a run, sweep (multirun) or log directory")
    parser.add_argument("--group-by", default=None,
                        help="comma-separated keys that form the groups (default: every swept "
                             "key but seed); '' puts all runs in one group")
    parser.add_argument("--no-samples", action="store_true",
                        help="CharLM: do not generate text from the best checkpoints")
    args = parser.parse_args(argv)
    group_by = None if args.group_by is None else [k for k in args.group_by.split(",") if k]
    html = build_report(args.directory, group_by=group_by, samples=not args.no_samples)
    print(f"report: {html}\n        {html.with_suffix('.md')}")


if __name__ == "__main__":
    main()
