"""`cg-ray submit` as a script of the checkout (what `make submit` runs; the code is
cg_ray.jobs.submit, the options those of `cg-ray submit --help`):

python jobs/submit.py train --address http://HEAD:8265 -- --config configs/demo.yaml --set ...
cg-ray submit train --address http://HEAD:8265 --config configs/demo.yaml --set ...   (the same)
make submit JOB=train CONFIG=configs/demo.yaml RAY_ADDRESS=http://HEAD:8265 ARGS="--set ..."
"""

import argparse
import sys

from cg_ray.cli import build_parser
from cg_ray.cli import main as cg_ray
from cg_ray.cli.jobs import split_submit_args
from cg_ray.jobs.submit import entrypoint, lost_because, with_resume_auto  # noqa: F401 (this script's names)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(submit's own options, the command's arguments) of `JOB [options] [-- the command's]`."""
    ns = build_parser().parse_args(["submit", *argv])
    return ns, split_submit_args(ns)


def main(argv: list[str] | None = None) -> int:
    return cg_ray(["submit", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
