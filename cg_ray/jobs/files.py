"""What travels with a job: the runtime_env of a YAML file (jobs/runtime_env.yaml: cg_ray installed
on the nodes, only the job scripts travel; jobs/runtime_env.dev.yaml: the checkout travels) with
this shell's storage and MLflow settings, and the local files the command's options name.

A file named by an option travels with the job: one inside the working_dir is named relative to
it; any other goes into a copy of the working_dir (as _files/NAME) that is uploaded instead. A
URI stays as it is (the nodes read it). A file option (FILE_OPTIONS) whose file is not here is
refused before anything is submitted. Folders (datasets, checkpoints) never travel: give them as
URIs the nodes can read, or paths on a file system they share.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import yaml

from cg_ray import storage
from cg_ray.errors import UserError

# The checkout whose jobs/ the default runtime_env names (working_dirs are relative to it).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_RUNTIME_ENV = os.path.join(ROOT, "jobs", "runtime_env.yaml")
PASS_ENV = (
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "CG_RAY_PROGRESS",
)
SECRET = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|CREDENTIAL|SESSION", re.I)
# Options whose value is a file the command reads: missing here (and not a URI), it is refused.
FILE_OPTIONS = ("--config", "--hierarchy", "--coordinates", "--categories")
# Options whose value may be a file (it travels then) or something else: a name (--pretrained
# openai), a checkpoint folder or a model URI (--checkpoint).
MAYBE_FILE_OPTIONS = ("--checkpoint", "--pretrained")
STAGED = "_files"


def runtime_env(path: str, extra_env: list[str]) -> dict:
    """The YAML's runtime_env, working_dir made absolute, this shell's settings added."""
    if not os.path.isfile(path):
        raise UserError(
            f"runtime_env file {path} does not exist: give --runtime-env FILE "
            f"(jobs/runtime_env.yaml or jobs/runtime_env.dev.yaml of a checkout)"
        )
    with open(path) as f:
        env = yaml.safe_load(f) or {}
    if env.get("working_dir") and "://" not in env["working_dir"]:
        env["working_dir"] = os.path.normpath(os.path.join(ROOT, env["working_dir"]))
    env_vars = dict(env.get("env_vars") or {})
    for name in (*PASS_ENV, *extra_env):
        if SECRET.search(name):
            raise UserError(
                f"refusing to send {name} with the job: give the nodes their credentials "
                f"(instance role, Kubernetes Secret)"
            )
        if name in os.environ:
            env_vars[name] = os.environ[name]
    env["env_vars"] = env_vars
    return env


def named_files(args: list[str]) -> list[tuple[int, str, str]]:
    """(index in args, prefix, local path) of each local file an option names (`--opt PATH` or
    `--opt=PATH`); a UserError for a file option whose file is not here."""
    found = []
    for i, arg in enumerate(args):
        option, equals, value = arg.partition("=")
        if equals and option.startswith("--"):
            index, prefix = i, option + "="
        elif arg.startswith("--") and i + 1 < len(args):
            option, index, prefix, value = arg, i + 1, "", args[i + 1]
        else:
            continue
        if option not in FILE_OPTIONS + MAYBE_FILE_OPTIONS or storage.is_uri(value):
            continue
        if os.path.isfile(value):
            found.append((index, prefix, value))
        elif option in FILE_OPTIONS:
            raise UserError(
                f"{option} {value}: no such file here; give a file that exists (it travels with "
                f"the job) or a URI the nodes can read (s3://...)"
            )
    return found


def stage(env: dict, args: list[str]) -> tuple[dict, list[str], str | None]:
    """(the runtime_env, the arguments naming the files where the job finds them, the local
    copy of the working_dir to remove once uploaded, or None)."""
    files = named_files(args)
    args = list(args)
    working_dir = env.get("working_dir")
    outside = []
    for index, prefix, path in files:
        full = os.path.abspath(path)
        if working_dir and "://" not in working_dir and full.startswith(working_dir + os.sep):
            args[index] = prefix + os.path.relpath(full, working_dir)
        else:
            outside.append((index, prefix, full))
    if not outside:
        return env, args, None
    if working_dir and "://" in working_dir:
        raise UserError(
            f"cannot add {outside[0][2]} to the remote working_dir {working_dir}: "
            f"give it as a URI the nodes can read"
        )
    staged = tempfile.mkdtemp(prefix="cg-ray-job-")
    if working_dir:
        ignore = shutil.ignore_patterns(*env.get("excludes", []), ".git", ".venv")
        shutil.copytree(working_dir, staged, dirs_exist_ok=True, ignore=ignore)
    for index, prefix, full in outside:
        name = os.path.basename(full)
        taken = os.path.exists(os.path.join(staged, STAGED, name))  # two files of one name
        folder = f"{STAGED}/{index}" if taken else STAGED
        os.makedirs(os.path.join(staged, folder), exist_ok=True)
        shutil.copy(full, os.path.join(staged, folder, name))
        args[index] = prefix + f"{folder}/{name}"
    return {**env, "working_dir": staged}, args, staged
