"""Every YAML of cluster/ and jobs/ against what Ray and KubeRay require: Ray's own cluster
launcher validation (its JSON schema and checks, offline), Ray's runtime_env type checks, and the
KubeRay CRD fields by hand; plus the safe defaults (dashboard not public, token auth, no secret
written in a file) and jobs/submit.py's runtime_env and entrypoint."""

import copy
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "jobs"))
import submit  # noqa: E402  jobs/submit.py

from cg_ray.errors import UserError  # noqa: E402
from cg_ray.jobs.files import runtime_env  # noqa: E402

YAMLS = sorted([*ROOT.glob("cluster/**/*.yaml"), *ROOT.glob("jobs/*.yaml")])
KUBERAY = {
    "RayCluster": ROOT / "cluster/kuberay/raycluster.yaml",
    "RayJob": ROOT / "cluster/kuberay/rayjob-tune.yaml",
}
# Fields that KubeRay v1.5.1 and v1.7.0 both have (ray.io/v1), from their API types
# (ray-operator/apis/ray/v1/*_types.go of the two tags): the manifests must load on either. v1.7.0
# adds, among others, RayCluster's upgradeStrategy and RayJob's preRunningDeadlineSeconds.
RAYCLUSTER_SPEC = {
    "headGroupSpec",
    "workerGroupSpecs",
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
    "managedBy",
    "gcsFaultToleranceOptions",
    "authOptions",
}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "numOfHosts",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "suspend",
    "idleTimeoutSeconds",
}
AUTOSCALER = {
    "resources",
    "image",
    "imagePullPolicy",
    "env",
    "envFrom",
    "volumeMounts",
    "securityContext",
    "idleTimeoutSeconds",
    "upscalingMode",
    "version",
}
RAYJOB_SPEC = {
    "entrypoint",
    "runtimeEnvYAML",
    "rayClusterSpec",
    "clusterSelector",
    "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "backoffLimit",
    "submissionMode",
    "submitterPodTemplate",
    "submitterConfig",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "entrypointResources",
    "suspend",
    "managedBy",
    "jobId",
    "metadata",
    "deletionStrategy",
}
SUBMITTER_CONFIG = {"backoffLimit"}
RUNTIME_ENV = {
    "working_dir",
    "py_modules",
    "pip",
    "uv",
    "conda",
    "env_vars",
    "excludes",
    "container",
    "image_uri",
    "config",
    "py_executable",
    "java_jars",
    "nsight",
}
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|AUTH_TOKEN$|CREDENTIAL", re.I)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_loads_and_writes_no_secret(path):
    docs = _docs(path)
    assert docs

    def walk(node):
        if isinstance(node, dict):
            # env_vars mappings (NAME: value) and Kubernetes env entries (name: NAME, value: v)
            pairs = list(node.items()) + (
                [(node["name"], node["value"])] if {"name", "value"} <= set(node) else []
            )
            for key, value in pairs:
                if (
                    ENV_NAME.fullmatch(str(key))
                    and SECRET_NAME.search(str(key))
                    and isinstance(value, (str, int))
                ):
                    pytest.fail(f"{path}: {key} has a value written in the file")
                if isinstance(value, str) and "://" in value:
                    assert "@" not in value.split("://", 1)[1].split("/")[0], f"credentials: {value}"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for doc in docs:
        walk(doc)
    text = path.read_text()
    assert not re.search(r"(?i)(aws_secret_access_key|password)\s*[:=]\s*\S", text)


def _launcher():
    return yaml.safe_load((ROOT / "cluster/aws.yaml").read_text())


def test_cluster_launcher_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(_launcher()))
    validate_config(config)  # Ray's JSON schema and its cross-checks (min <= max workers, head)
    broken = _launcher()
    broken["available_node_types"]["worker.gpu"]["gpus"] = 1
    with pytest.raises(Exception, match="gpus"):
        validate_config(prepare_config(broken))


def test_cluster_launcher_node_types_limits_and_safe_defaults():
    config = _launcher()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu, cpu = types["worker.gpu"], types["worker.cpu"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # GPU instance families
    assert cpu["node_config"]["InstanceType"].startswith(("c", "m"))
    for node in (gpu, cpu):
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--num-cpus=0" in head_start
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(commands)
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert config["file_mounts"]["/home/ubuntu/cg_ray.env"] == "cluster/cg_ray.env"
    assert "security_group" not in config["provider"]  # Ray would add SSH from 0.0.0.0/0 to it
    example = (ROOT / "cluster/cg_ray.env.example").read_text()
    assert "CG_RAY_DATA=s3://" in example and "MLFLOW_TRACKING_URI=" in example
    assert "cluster/cg_ray.env" in (ROOT / ".gitignore").read_text()


def _walk_values(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_values(value)
    else:
        yield node


def test_cluster_launcher_opens_nothing_to_the_world_and_gives_every_node_a_profile():
    """Through Ray's own preparation: every node type brings its security group (so Ray's AWS
    provider creates none: the group it creates gets SSH from 0.0.0.0/0) and an IAM instance
    profile (so Ray creates no default one for the head, and the workers can reach the bucket);
    no rule anywhere opens a port to 0.0.0.0/0 or ::/0; the README's step makes that group."""
    from ray.autoscaler._private.aws import config as aws
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(_launcher()))
    validate_config(config)
    assert not any(str(v).strip() in ("0.0.0.0/0", "::/0") for v in _walk_values(_launcher()))
    assert "0.0.0.0/0" not in (ROOT / "cluster/aws.yaml").read_text().replace(
        "SSH from 0.0.0.0/0", ""
    )  # only the comment that says why
    for name, node in config["available_node_types"].items():
        node_config = node["node_config"]
        assert node_config["IamInstanceProfile"]["Name"].startswith("cg-ray-"), name
        assert node_config["SecurityGroupIds"] == ["sg-REPLACE_WITH_YOUR_GROUP"], name
    # Ray's own steps return before any AWS call: nothing to create.
    assert aws._configure_security_group(copy.deepcopy(config)) == config
    assert aws._configure_iam_role(copy.deepcopy(config)) == config
    readme = (ROOT / "cluster/README.md").read_text()
    assert "authorize-security-group-ingress" in readme and "--cidr $ADMIN_CIDR" in readme
    assert 's/sg-REPLACE_WITH_YOUR_GROUP/$SG/g" cluster/aws.yaml' in readme
    for profile in ("cg-ray-head", "cg-ray-worker"):
        assert profile in readme
    # cg_ray sizes trials from the node types: GPUs declared where the instances have them.
    from cg_ray.resources import types_from_config

    types = {t.name: t for t in types_from_config(_launcher())}
    assert types["worker.gpu"].resources == {"CPU": 8.0, "GPU": 1.0}
    assert "GPU" not in types["worker.cpu"].resources and "head.cpu" not in types


def _readme_commands() -> list[list[str]]:
    """The cg-ray command lines of cluster/README.md, with `make submit` lines turned into the
    command they submit (JOB, CONFIG, ARGS); shell variables stand for themselves."""
    text = (ROOT / "cluster/README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        for inline in re.findall(r"`(cg-ray \w+ [^`]+)`", line):  # a command, not a name
            commands.append(shlex.split(inline)[1:])
        line = line.strip()
        if line.startswith("make submit"):
            words = dict(w.split("=", 1) for w in shlex.split(line)[2:] if "=" in w)
            argv = [words["JOB"]] + (["--config", words["CONFIG"]] if "CONFIG" in words else [])
            commands.append(argv + shlex.split(words.get("ARGS", "")))
        elif line.startswith("cg-ray "):
            commands.append(shlex.split(line)[1:])
    return commands


def test_cluster_readme_commands_parse_with_the_cli():
    from cg_ray.cli import build_parser

    commands = _readme_commands()
    assert {c[0] for c in commands} >= {"prepare", "pack", "scenes", "text", "tune", "train", "evaluate"}
    parser = build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"cluster/README.md: `cg-ray {shlex.join(argv)}` does not parse")


def _node_types_env(container: dict) -> dict:
    (value,) = [e["value"] for e in container.get("env", []) if e["name"] == "CG_RAY_NODE_TYPES"]
    return json.loads(value)


def _check_group(group: dict, kind: str) -> dict:
    """A head or worker group: known fields, one Ray container wired to the settings."""
    assert set(group) <= (HEAD_GROUP if kind == "head" else WORKER_GROUP), set(group)
    assert isinstance(group["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # map[string]string
    pod = group["template"]["spec"]
    assert pod["serviceAccountName"] == "cg-ray"
    container = pod["containers"][0]
    assert container["name"] == f"ray-{kind}" and container["image"]
    sources = container["envFrom"]
    assert {"configMapRef": {"name": "cg-ray-settings"}} in sources
    assert {"secretRef": {"name": "cg-ray-secrets", "optional": True}} in sources
    if kind == "worker":
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    return container["resources"]


def _check_cluster_spec(spec: dict) -> None:
    import ray

    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}  # KubeRay >= 1.5.1, Ray >= 2.52
    assert spec["enableInTreeAutoscaling"] is True
    assert set(spec["autoscalerOptions"]) <= AUTOSCALER
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and not head.get("enableIngress")
    assert head["rayStartParams"]["num-cpus"] == "0"
    _check_group(head, "head")
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    gpu = _check_group(groups["gpu"], "worker")
    cpu = _check_group(groups["cpu"], "worker")
    assert gpu["limits"]["nvidia.com/gpu"] == "1" and "nvidia.com/gpu" not in cpu["limits"]
    assert groups["gpu"]["maxReplicas"] >= 1 and groups["cpu"]["maxReplicas"] >= 1
    # The head's drivers learn the worker groups from CG_RAY_NODE_TYPES: it mirrors them.
    declared = _node_types_env(head["template"]["spec"]["containers"][0])
    assert set(declared) == set(groups)
    for name, group in groups.items():
        limits = _check_group(group, "worker")["limits"]
        want = {"CPU": int(limits["cpu"])}
        if "nvidia.com/gpu" in limits:
            want["GPU"] = int(limits["nvidia.com/gpu"])
        assert declared[name] == {"resources": want, "max_workers": group["maxReplicas"]}, name


def test_kuberay_raycluster_manifest():
    (doc,) = _docs(KUBERAY["RayCluster"])
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    assert doc["metadata"]["namespace"] == "cg-ray"
    _check_cluster_spec(doc["spec"])


def test_kuberay_rayjob_manifest_runs_the_tune_entry_point():
    from ray.runtime_env import RuntimeEnv

    from cg_ray.config import load_config

    (doc,) = _docs(KUBERAY["RayJob"])
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(spec["rayClusterSpec"])
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(env) <= RUNTIME_ENV
    RuntimeEnv(**env)
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    assert {"configMapRef": {"name": "cg-ray-settings"}} in submitter["containers"][0]["envFrom"]
    # The entry point is a jobs/ script of the image's checkout, with a config that loads.
    words = shlex.split(spec["entrypoint"])
    assert words[0] == "python" and words[1] == "/opt/cg_ray/jobs/tune.py"
    assert (ROOT / "jobs" / "tune.py").exists()
    config = words[words.index("--config") + 1].replace("/opt/cg_ray/", "")
    assert load_config(str(ROOT / config)).tune.space
    assert "data.path=$CG_RAY_DATA" in words and "run.storage_path=$CG_RAY_STORAGE" in words
    assert "train.use_gpu=true" in words  # one GPU per trial, whether GPU nodes are up or not
    dockerfile = (ROOT / "cluster/Dockerfile").read_text()
    assert "COPY --chown=ray:users . /opt/cg_ray" in dockerfile
    assert ".venv" in (ROOT / "cluster/Dockerfile.dockerignore").read_text()


def test_kuberay_rayjob_restarts_itself_and_continues():
    """A lost head, submitter or job is run again (backoffLimit >= 2, a new cluster each time)
    and the entry point continues the search it finds (`--resume auto`): the same command works
    for the first run and for every retry. KubeRay's own checks of backoffLimit (its webhook and
    controller, v1.5.1 and v1.7.0): an int32 >= 0, refused with clusterSelector or InteractiveMode."""
    from cg_ray.cli import build_parser

    for path in sorted((ROOT / "cluster/kuberay").glob("rayjob*.yaml")):  # any RayJob, train or tune
        (doc,) = _docs(path)
        spec = doc["spec"]
        assert isinstance(spec["backoffLimit"], int) and 2 <= spec["backoffLimit"] < 2**31, path
        assert "clusterSelector" not in spec and spec["submissionMode"] != "InteractiveMode", path
        assert set(spec["submitterConfig"]) <= SUBMITTER_CONFIG
        assert isinstance(spec["submitterConfig"]["backoffLimit"], int)
        words = shlex.split(spec["entrypoint"])
        assert words[words.index("--resume") + 1] == "auto", path
        command = words[1].rsplit("/", 1)[-1].removesuffix(".py")
        args = build_parser().parse_args([command, *words[2:]])
        assert args.resume == "auto", path


@pytest.mark.parametrize("name", ["runtime_env.yaml", "runtime_env.dev.yaml"])
def test_job_runtime_envs_pass_rays_checks(name):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((ROOT / "jobs" / name).read_text())
    assert set(env) <= RUNTIME_ENV
    RuntimeEnv(**env)
    assert (ROOT / env["working_dir"]).is_dir()
    resolved = runtime_env(str(ROOT / "jobs" / name), [])
    assert Path(resolved["working_dir"]).is_absolute()
    if name == "runtime_env.dev.yaml":
        assert ".venv" in env["excludes"] and ".git" in env["excludes"]


def test_job_entry_points_call_the_cli_with_their_command():
    from cg_ray.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    from cg_ray.jobs import JOBS

    for job in JOBS:
        text = (ROOT / "jobs" / f"{job}.py").read_text()
        assert f'main(["{job}", *sys.argv[1:]])' in text
        assert job in commands


def test_submit_passes_settings_not_secrets(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-to-be-sent")
    env = runtime_env(str(ROOT / "jobs/runtime_env.yaml"), [])
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert env["env_vars"]["AWS_REGION"] == "eu-west-1"
    assert "AWS_SECRET_ACCESS_KEY" not in env["env_vars"]
    with pytest.raises(UserError, match="refusing to send AWS_SECRET_ACCESS_KEY"):
        runtime_env(str(ROOT / "jobs/runtime_env.yaml"), ["AWS_SECRET_ACCESS_KEY"])
    assert submit.entrypoint("train", env, ["--config", "a b.yaml"]) == "python train.py --config 'a b.yaml'"
    dev = runtime_env(str(ROOT / "jobs/runtime_env.dev.yaml"), [])
    assert submit.entrypoint("tune", dev, ["--resume"]) == "python jobs/tune.py --resume"
    assert submit.entrypoint("pack", {}, ["DEST"]) == "cg-ray pack DEST"


def test_submit_finds_the_token_as_rays_cli_does(tmp_path):
    """In a process of its own: Ray reads the auth mode and token once per process, and this
    session's own Ray must keep the ones it started with."""
    import os
    import subprocess

    token = tmp_path / "token"
    token.write_text("a" * 32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_AUTH_TOKEN_PATH=str(token), HOME=str(tmp_path))
    code = "import os, cg_ray.jobs.cluster as c; c.use_auth_token(); print(os.environ.get('RAY_AUTH_MODE'))"
    jobs = str(Path(__file__).resolve().parents[1] / "jobs")
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=jobs, env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "token"
    env.pop("RAY_AUTH_TOKEN_PATH")  # nothing anywhere: token mode stays off
    none = subprocess.run(
        [sys.executable, "-c", code], cwd=jobs, env=env, capture_output=True, text=True, check=True
    )
    assert none.stdout.strip() == "None"


def test_submit_keeps_its_own_options_apart_from_the_commands():
    ns, args = submit.parse(
        [
            "train",
            "--address",
            "http://head:8265",
            "--runtime-env",
            "jobs/runtime_env.dev.yaml",
            "--",
            "--config",
            "c.yaml",
            "--set",
            "train.epochs=2",
            "--address",
            "not-submits",
        ]
    )
    assert (ns.job, ns.address, ns.runtime_env) == ("train", "http://head:8265", "jobs/runtime_env.dev.yaml")
    assert args == ["--config", "c.yaml", "--set", "train.epochs=2", "--address", "not-submits"]
    ns, args = submit.parse(["tune", "--address", "http://head:8265"])
    assert ns.job == "tune" and args == []
