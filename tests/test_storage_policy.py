"""The storage retry policy reaches every process, and storage errors get their names.

pyarrow's S3FileSystem loses its retry strategy when pickled (to a Ray task, to Ray Train's
checkpoint upload): cg_ray's filesystem is rebuilt with the policy of the process that unpickles
it. Counted for real: the fault proxy answers every request for one object with a 500, and the
number of requests it saw is the number of attempts made."""

import os
import pickle
import subprocess
import sys

import pyarrow.fs as pafs
import pytest
from fault_proxy import FaultProxy

from cg_ray import storage
from cg_ray.config import load_config
from cg_ray.errors import UserError
from cg_ray.storage_errors import ObjectMissing, StorageError, StorageUnavailable, classify, from_failure

READ_IN_A_NEW_PROCESS = """
import os, pickle, sys
fs = pickle.loads(sys.stdin.buffer.read())
try:
    fs.open_input_stream(sys.argv[1]).read()
except OSError as exc:
    print(type(exc).__name__, flush=True)
os._exit(0)  # without pyarrow's S3 finalizer, whose absence can crash an exiting interpreter
"""


def attempts_in_a_new_process(fs, key: str, proxy: FaultProxy, attempts_env: str) -> int:
    before = proxy.stats()["failed_key"]
    env = dict(os.environ, CG_RAY_STORAGE_MAX_ATTEMPTS=attempts_env)
    subprocess.run(
        [sys.executable, "-c", READ_IN_A_NEW_PROCESS, key],
        input=pickle.dumps(fs),
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return proxy.stats()["failed_key"] - before


def test_a_shipped_filesystem_keeps_the_policy_of_where_it_runs(s3, monkeypatch):
    bucket = s3("policy").removeprefix("s3://")
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], seed=0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.write_bytes(f"s3://{bucket}/frame.jpg", b"x" * 1000)
        proxy.fail_key("frame.jpg")
        ours, key = storage.filesystem(f"s3://{bucket}/frame.jpg")
        host = proxy.url.removeprefix("http://")
        plain = pafs.S3FileSystem(
            endpoint_override=host,
            scheme="http",
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
        )
        assert attempts_in_a_new_process(ours, key, proxy, "4") == 4
        assert attempts_in_a_new_process(ours, key, proxy, "2") == 2
        assert attempts_in_a_new_process(plain, key, proxy, "4") == 3  # pyarrow's default: policy lost


def test_storage_errors_are_named_and_told_apart():
    denied = OSError(
        "When listing objects under key 'world' in bucket 'b': AWS Error ACCESS_DENIED during "
        "ListObjectsV2 operation: Access Denied"
    )
    error = classify(denied, "s3://b/world", 10)
    assert isinstance(error, StorageError) and not isinstance(error, ObjectMissing)
    assert str(error).startswith("storage: 's3://b/world': access denied (")
    throttled = OSError(
        "When reading information for key 'k/1.jpg' in bucket 'b': AWS Error SLOW_DOWN during "
        "GetObject operation: Please reduce your request rate."
    )
    error = classify(throttled, "s3://b/k/1.jpg", 10)
    assert isinstance(error, StorageUnavailable) and "kept failing after 10 attempts" in str(error)
    headless = OSError("AWS Error UNKNOWN (HTTP status 500) during HeadObject operation: No response body.")
    assert isinstance(classify(headless, "s3://b/k", 3), StorageUnavailable)
    missing = FileNotFoundError("Path does not exist 'b/k'")
    assert isinstance(classify(missing, "s3://b/k", 3), ObjectMissing)
    # Ray wraps a task's error as text: the storage error inside is found and rebuilt
    wrapped = RuntimeError(f"ray::MapBatches(pack_shard)() ...\n{type(error).__name__}: {error}\n  more")
    found = from_failure(wrapped, 10)
    assert isinstance(found, StorageUnavailable) and str(found) == str(error)
    assert from_failure(RuntimeError("CUDA out of memory"), 10) is None


def test_the_policy_is_a_config_field_and_reaches_the_environment(monkeypatch):
    monkeypatch.delenv("CG_RAY_STORAGE_MAX_ATTEMPTS", raising=False)
    assert load_config(None).storage.max_attempts == 12
    monkeypatch.setenv("CG_RAY_STORAGE_MAX_ATTEMPTS", "6")
    assert load_config(None).storage.max_attempts == 6
    cfg = load_config(None, ["storage.max_attempts=3"])
    storage.use_policy(cfg.storage.max_attempts)
    assert os.environ["CG_RAY_STORAGE_MAX_ATTEMPTS"] == "3" and storage.max_attempts() == 3
    with pytest.raises(Exception, match="storage.max_attempts"):
        load_config(None, ["storage.max_attempts=0"])
    monkeypatch.setenv("CG_RAY_STORAGE_MAX_ATTEMPTS", "lots")
    with pytest.raises(UserError, match="CG_RAY_STORAGE_MAX_ATTEMPTS='lots' must be a whole number"):
        load_config(None)
