"""`cg-ray serve`: the real command on a tiny checkpoint, asked over HTTP like a client would
and through its page in a real browser (one server for the module), plus the request parsing,
the batcher and the start-up checks without Ray."""

import asyncio
import json
import os
import shutil
import time
import urllib.request
import zipfile

import pytest
from output import own
from serve_helpers import running_server, tiny_model

from cg_ray.cli import main
from cg_ray.errors import UserError
from cg_ray.predict.batching import Batcher
from cg_ray.predict.http import RequestError, check_token, classify, extract_frames, sniff, uri_upload
from cg_ray.taxonomy import LEVELS

TOKEN = "s3cret-token-for-tests"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = os.environ.get(
    "CG_RAY_ARTIFACTS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(str(tmp_path_factory.mktemp("serve")))


@pytest.fixture(scope="module")
def server(model):
    with running_server(
        model["ckpt"],
        "--max-upload-mb",
        "1",
        "--max-batch",
        "8",
        # A batch waits for every request that was on its way, however slow the machine: the
        # batch sizes the tests see do not depend on its speed.
        "--batch-wait-ms",
        "600000",
        "--allow-local-paths",
        token=TOKEN,
    ) as server:
        yield server


def predict_json(capsys, ckpt, source):
    assert main(["predict", "--checkpoint", ckpt, "--json", source]) == 0
    return json.loads(own(capsys.readouterr().out).splitlines()[0])


def assert_same_prediction(served: dict, cli: dict):
    assert {k: served[k] for k in LEVELS} == {k: cli[k] for k in LEVELS}
    for level in LEVELS:
        assert [t["label"] for t in served["top_k"][level]] == [t["label"] for t in cli["top_k"][level]]
        for a, b in zip(served["top_k"][level], cli["top_k"][level]):
            assert a["prob"] == pytest.approx(b["prob"], abs=1e-4)


def frames_zip(folder: str, path: str) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(os.listdir(folder)):
            archive.write(os.path.join(folder, name), f"clip/{name}")
    return path


def a_frames_folder(model) -> str:
    for split in ("train", "val"):
        city_dir = os.path.join(model["root"], "frames", split, "Lyon")
        if os.path.isdir(city_dir):
            return os.path.join(city_dir, sorted(os.listdir(city_dir))[0])
    raise AssertionError("no Lyon clip")


@pytest.mark.slow
def test_uploads_and_uris_answer_what_cg_ray_predict_answers(server, model, capsys, tmp_path):
    mp4 = model["rows"][0]["path"]
    answer = server.upload(mp4)
    assert answer.status == 200, answer.body
    cli = predict_json(capsys, model["ckpt"], mp4)
    assert_same_prediction(answer.body, cli)
    assert answer.body["input"] == os.path.basename(mp4)
    assert answer.body["mode"] == "codependent" and answer.body["latency_ms"] > 0
    assert set(answer.body) == set(cli) | {"mode", "latency_ms"}

    # Raw bytes with a video content type.
    with open(model["rows"][3]["path"], "rb") as f:
        raw = server.request("/predict", f.read(), {"Content-Type": "video/mp4"})
    assert raw.status == 200
    assert_same_prediction(raw.body, predict_json(capsys, model["ckpt"], model["rows"][3]["path"]))

    # A frames folder as a zip, and as a path in JSON.
    folder = a_frames_folder(model)
    cli = predict_json(capsys, model["ckpt"], folder)
    zipped = server.request(
        "/predict",
        open(frames_zip(folder, str(tmp_path / "clip.zip")), "rb").read(),
        {"Content-Type": "application/zip"},
    )
    assert zipped.status == 200, zipped.body
    assert_same_prediction(zipped.body, cli)
    by_uri = server.request(
        "/predict", json.dumps({"uri": folder}).encode(), {"Content-Type": "application/json"}
    )
    assert by_uri.status == 200 and by_uri.body["input"] == folder
    assert_same_prediction(by_uri.body, cli)


@pytest.mark.slow
def test_bad_inputs_get_4xx_with_a_message_and_the_server_goes_on(server, model, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a video\n" * 20)
    mp4 = model["rows"][1]["path"]
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(open(mp4, "rb").read()[:1500])
    big = tmp_path / "big.mp4"
    big.write_bytes(open(mp4, "rb").read() + os.urandom(int(1.5 * 2**20)))
    empty_zip = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty_zip, "w") as archive:
        archive.writestr("readme.txt", "no frames here")
    cases = [
        (server.upload(str(text), content_type="text/plain"), 415, "not a video"),
        (server.upload(str(truncated)), 422, "cannot decode video 'cut.mp4'"),
        (server.upload(str(big)), 413, "larger than the server's limit of 1 MB"),
        (server.upload(str(mp4), field="file"), 400, "no file field 'video'"),
        (
            server.request("/predict", b'{"url": "x"}', {"Content-Type": "application/json"}),
            400,
            "no 'uri' field",
        ),
        (
            server.request("/predict", open(empty_zip, "rb").read(), {"Content-Type": "application/zip"}),
            422,
            "has no frames",
        ),
        (
            server.request(
                "/predict",
                json.dumps({"uri": str(tmp_path / "gone.mp4")}).encode(),
                {"Content-Type": "application/json"},
            ),
            404,
            "does not exist",
        ),
        (server.request("/predict", method="GET"), 405, "takes POST"),
        (server.request("/nowhere"), 404, "no such route"),
    ]
    for answer, status, message in cases:
        assert answer.status == status, (status, answer.body)
        assert message in answer.body["error"] and "Traceback" not in answer.body["error"]
        assert str(tmp_path.parent) not in answer.body["error"] or "gone.mp4" in answer.body["error"]
    assert server.request("/healthz").status == 200
    assert server.upload(mp4).status == 200


@pytest.mark.slow
def test_token_guard(server, model):
    mp4 = model["rows"][0]["path"]
    for token in (None, "wrong"):
        for answer in (server.upload(mp4, token=token), server.request("/info", token=token)):
            assert answer.status == 401 and "Authorization: Bearer" in answer.body["error"]
    # Liveness and the page itself carry no data: they answer without the token.
    assert server.request("/healthz", token=None).status == 200
    assert "<canvas" in server.request("/", token=None).body["text"]


def new_counts(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@pytest.mark.slow
def test_requests_in_flight_together_are_answered_in_one_batch(server, model):
    """8 requests held until the replica counts all 8 on their way (max batch 8): one forward
    pass answers them all, each with what the clip alone gets from `cg-ray predict`'s code."""
    from cg_ray.predict.predictor import Predictor, open_checkpoint, predict_inputs

    rows = model["rows"][:8]
    before = server.replica()
    with server.held([open(row["path"], "rb").read() for row in rows]) as release:
        answers = release()
    after = server.replica()
    assert [a.status for a in answers] == [200] * 8, [a.body for a in answers]
    assert new_counts(after["batch_sizes"], before["batch_sizes"]) == {"8": 1}
    assert new_counts(after["batches_closed"], before["batches_closed"]) == {"full": 1}
    alone = predict_inputs(
        Predictor(open_checkpoint(model["ckpt"])[0]), [r["path"] for r in rows], batch_size=1
    )
    for answer, outcome in zip(answers, alone):
        assert_same_prediction(answer.body, outcome.prediction)
    info = server.request("/info").body
    assert info["taxonomy"] == {"city": 6, "state": 6, "country": 6, "continent": 6}
    assert info["config_digest"].startswith("sha256:") and info["checkpoint"] == model["ckpt"]
    assert info["auth"] is True and info["max_batch"] == 8 and info["batch_sizes"] == after["batch_sizes"]


@pytest.mark.slow
def test_a_batch_waits_only_for_requests_on_their_way(server, model, tmp_path):
    """5 requests in flight, one a clip that does not decode; max batch 8, wait cap 10 minutes:
    the 4 clips go as one batch once no request is on its way (the bad one answered 422 and
    left), not when the cap ends; a lone request after them is a batch of 1 that waited for no
    one. Both closed because nothing more was coming, never by the cap."""
    good = [open(row["path"], "rb").read() for row in model["rows"][:4]]
    bad = good[0][:1500]  # the container's header without its frames
    before = server.replica()
    with server.held([good[0], good[1], bad, good[2], good[3]]) as release:
        answers = release()
    assert [a.status for a in answers] == [200, 200, 422, 200, 200], [a.body for a in answers]
    assert "cannot decode video" in answers[2].body["error"]
    middle = server.replica()
    assert new_counts(middle["batch_sizes"], before["batch_sizes"]) == {"4": 1}
    assert server.request("/predict", good[0], {"Content-Type": "video/mp4"}).status == 200
    after = server.replica()
    assert new_counts(after["batch_sizes"], middle["batch_sizes"]) == {"1": 1}
    assert new_counts(after["batches_closed"], before["batches_closed"]) == {"none_coming": 2}
    assert after["coming"] == after["queued"] == 0


@pytest.mark.slow
def test_prometheus_metrics_include_the_batches(server):
    assert server.metrics_url, server.log()[-2000:]
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        if "ray_cg_ray_serve_batch_size" in text and "ray_serve_num_http_requests" in text:
            break
        time.sleep(2)
    assert "ray_cg_ray_serve_batch_size" in text and "ray_serve_num_http_requests" in text
    assert "ray_cg_ray_serve_batch_wait_ms" in text


@pytest.mark.slow
def test_haproxy_receives_the_requests_when_it_is_installed(server):
    """make test installs Debian's haproxy: the module's server (--ingress auto) has it in front,
    and every test above went through it; running_server checks it is gone after the stop."""
    assert server.ingress is not None and server.ingress.name() == "haproxy", server.ingress
    assert "ingress HAProxy" in server.log()
    assert server.request("/info").body["ingress"] == "haproxy"


@pytest.mark.slow
def test_ingress_serve_puts_serve_proxy_in_front(model):
    with running_server(model["ckpt"], "--ingress", "serve") as server:
        assert server.ingress is not None and server.ingress.cmdline()[0].startswith("ray::ProxyActor")
        assert "ingress Serve's proxy" in server.log()
        answer = server.upload(model["rows"][0]["path"])
        assert answer.status == 200 and answer.body["city"] == model["rows"][0]["city"], answer.body
        assert server.request("/info").body["ingress"] == "serve"


# -- without Ray ----------------------------------------------------------------------------------


def test_the_ingress_is_haproxy_when_found_unless_told_and_the_cluster_s_on_a_cluster(tmp_path, monkeypatch):
    from cg_ray.predict.serve import ServeOptions, choose_ingress

    monkeypatch.setenv("PATH", str(tmp_path))  # no haproxy here
    auto, forced = ServeOptions("ckpt"), ServeOptions("ckpt", ingress="haproxy")
    assert choose_ingress(auto, remote=False) == "serve"
    with pytest.raises(UserError, match="no haproxy on PATH: install it .* or use --ingress serve"):
        choose_ingress(forced, remote=False)
    with pytest.raises(UserError, match="on a cluster, set RAY_SERVE_ENABLE_HA_PROXY=1"):
        choose_ingress(forced, remote=True)
    assert choose_ingress(auto, remote=True) == "cluster"
    found = tmp_path / "haproxy"  # only looked up on PATH, never run here
    found.write_text("#!/bin/sh\n")
    found.chmod(0o755)
    assert choose_ingress(auto, remote=False) == choose_ingress(forced, remote=False) == "haproxy"
    assert choose_ingress(ServeOptions("ckpt", ingress="serve"), remote=False) == "serve"


def test_haproxy_files_and_ports_are_each_server_s_own(tmp_path):
    """Ray's defaults (/tmp/haproxy-serve, stats on 8404, metrics on 9101, the fallback proxy on
    8500) would collide between two servers on one machine."""
    from cg_ray.predict.serve import haproxy_environment

    one, two = haproxy_environment(str(tmp_path / "a")), haproxy_environment(str(tmp_path / "b"))
    assert one["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    ports = [k for k in one if k.endswith("_PORT")]
    assert len(ports) == 4 and len({one[k] for k in ports} | {two[k] for k in ports}) == 8
    paths = [k for k in one if k.endswith(("_LOC", "_PATH", "_BASE", "_FILE")) and "BINARY" not in k]
    assert len(paths) == 5 and all(one[k].startswith(str(tmp_path / "a")) for k in paths)


def test_sniffing_bodies():
    assert sniff(b"\x00\x00\x00\x20ftypisom") == "video"
    assert sniff(b"PK\x03\x04rest") == "zip"
    assert sniff(b"hello, world\n") == "text"
    assert sniff(bytes(range(256))) == "unknown"
    assert classify(b"\x1a\x45\xdf\xa3webm", "", "a.webm") == "video"
    assert classify(bytes(range(200, 256)), "video/x-odd", "odd") == "video"  # the decoder judges
    with pytest.raises(RequestError, match="not a video") as err:
        classify(b"GIF89a...", "image/gif", "cat.gif")
    assert err.value.status == 415
    with pytest.raises(RequestError, match="is empty"):
        classify(b"", "video/mp4", "nothing.mp4")


def test_zip_frames_stay_inside_and_are_bounded(tmp_path):
    archive_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("../../escape/0001.jpg", b"\xff\xd8\xff" + b"x" * 100)
        archive.writestr("clip/0002.jpg", b"\xff\xd8\xff" + b"y" * 100)
        archive.writestr("clip/notes.txt", b"ignored")
    folder = extract_frames(str(archive_path), str(tmp_path / "out"), 10_000, "evil.zip")
    assert sorted(os.listdir(folder)) == ["0001.jpg", "0002.jpg"]
    assert not (tmp_path / "escape").exists()
    with pytest.raises(RequestError, match="unpack to more than") as err:
        extract_frames(str(archive_path), str(tmp_path / "out2"), 150, "evil.zip")
    assert err.value.status == 413
    with pytest.raises(RequestError, match="cannot read the zip"):
        (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
        extract_frames(str(tmp_path / "bad.zip"), str(tmp_path / "out3"), 10_000, "bad.zip")


def test_json_uris_and_tokens():
    assert uri_upload(b'{"uri": "s3://bucket/a.mp4"}', allow_local=False).source == "s3://bucket/a.mp4"
    for body in (b'{"uri": "/etc/passwd"}', b'{"uri": "file:///etc/passwd"}'):
        with pytest.raises(RequestError, match="--allow-local-paths") as err:
            uri_upload(body, allow_local=False)
        assert err.value.status == 403
    assert uri_upload(b'{"uri": "/data/clip.mp4"}', allow_local=True).source == "/data/clip.mp4"
    with pytest.raises(RequestError, match="does not parse"):
        uri_upload(b"{nope", allow_local=True)
    check_token(None, None)
    check_token("Bearer abc", "abc")
    for header in (None, "Bearer abd", "Basic abc", "abc"):
        with pytest.raises(RequestError) as err:
            check_token(header, "abc")
        assert err.value.status == 401


class Scenario:
    """A Batcher (max batch 3, wait cap an hour unless told) over a model that records its
    batches and can be held; requests whose steps the test orders itself."""

    def __init__(self, max_batch: int = 3, wait_s: float = 3600):
        import threading

        self.batches: list[list] = []
        self.hold, self.running = threading.Event(), threading.Event()
        self.hold.set()
        self.batcher = Batcher(self._model, max_batch, wait_s)

    def _model(self, items: list) -> list:
        self.running.set()
        self.hold.wait(30)
        if "boom" in items:
            raise ValueError("the model failed")
        self.batches.append(list(items))
        return [f"answer {item}" for item in items]

    async def request(self, item, gate: asyncio.Event | None = None, leave: bool = False):
        """On its way until `gate` opens; then submits `item`, or leaves without (a clip that
        did not decode)."""
        with self.batcher.expect() as ticket:
            if gate:
                await gate.wait()
            if leave:
                return None
            return await ticket.submit(item)

    async def until(self, **wanted):
        while any(self.batcher.stats()[k] != v for k, v in wanted.items()):
            await asyncio.sleep(0)


def play(scenario: Scenario, script) -> None:
    # A batch that waited for the cap (an hour) fails the test here instead of hanging it.
    asyncio.run(asyncio.wait_for(script(scenario), 60))


def test_batcher_a_lone_request_waits_for_nothing():
    async def script(s):
        assert await s.request("a") == "answer a"

    play(s := Scenario(), script)
    assert s.batches == [["a"]] and s.batcher.stats()["batches_closed"] == {"none_coming": 1}


def test_batcher_gathers_the_requests_on_their_way_and_no_later_ones():
    async def script(s):
        gates = {name: asyncio.Event() for name in "abcd"}
        first = [asyncio.create_task(s.request(n, gates[n])) for n in "ab"]
        await s.until(coming=2)
        gates["a"].set()
        await s.until(queued=1)  # a waits for b, which was on its way when a was queued
        later = asyncio.create_task(s.request("c", gates["c"]))  # c comes after: not waited for
        await s.until(coming=2)
        gates["b"].set()
        assert await asyncio.gather(*first) == ["answer a", "answer b"]
        gates["c"].set()
        assert await later == "answer c"

    play(s := Scenario(), script)
    assert s.batches == [["a", "b"], ["c"]]
    assert s.batcher.stats()["batches_closed"] == {"none_coming": 2}


def test_batcher_fills_batches_while_the_model_runs_and_splits_at_the_max():
    async def script(s):
        s.hold.clear()  # the model is busy with x until released
        busy = asyncio.create_task(s.request("x"))
        while not s.running.is_set():
            await asyncio.sleep(0.001)
        waiting = [asyncio.create_task(s.request(n)) for n in "abcde"]
        await s.until(queued=5)
        s.hold.set()
        assert await busy == "answer x"
        assert await asyncio.gather(*waiting) == [f"answer {n}" for n in "abcde"]

    play(s := Scenario(max_batch=3), script)
    assert s.batches == [["x"], ["a", "b", "c"], ["d", "e"]]
    assert s.batcher.stats()["batch_sizes"] == {"1": 1, "2": 1, "3": 1}
    assert s.batcher.stats()["batches_closed"] == {"full": 1, "none_coming": 2}


def test_batcher_a_request_that_leaves_or_a_failed_batch_or_the_cap_stop_no_one():
    async def leave(s):  # a waits for "gone", which leaves without a clip: a's batch goes then
        gate = asyncio.Event()
        leaving = asyncio.create_task(s.request("gone", gate, leave=True))
        await s.until(coming=1)
        waiting = asyncio.create_task(s.request("a"))
        await s.until(queued=1)
        gate.set()
        assert await waiting == "answer a" and await leaving is None

    play(s := Scenario(), leave)
    assert s.batches == [["a"]] and s.batcher.stats()["batches_closed"] == {"none_coming": 1}

    async def failing(s):
        with pytest.raises(ValueError, match="the model failed"):
            await s.request("boom")
        assert await s.request("b") == "answer b"  # the batcher goes on

    play(s := Scenario(), failing)
    assert s.batches == [["b"]]

    async def capped(s):
        gate = asyncio.Event()
        slow = asyncio.create_task(s.request("slow", gate))
        await s.until(coming=1)
        assert await s.request("a") == "answer a"  # cap 0: does not wait for slow
        gate.set()
        assert await slow == "answer slow"

    play(s := Scenario(wait_s=0), capped)
    assert s.batches == [["a"], ["slow"]]
    assert s.batcher.stats()["batches_closed"] == {"wait_cap": 1, "none_coming": 1}


def test_serve_refuses_bad_options_before_starting_ray(tmp_path, capsys, monkeypatch):
    import socket

    assert main(["serve", "--checkpoint", str(tmp_path / "none"), "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--port 0 is not a TCP port" in capsys.readouterr().err
    code = main(["serve", "--checkpoint", str(tmp_path / "none"), "--host", "0.0.0.0", "--port", "18999"])
    err = capsys.readouterr().err
    assert code == 2 and "no authentication" in err and "--token" in err
    assert "does not exist" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--checkpoint", str(tmp_path), "--port", str(port)]) == 2
        assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    for args, message in (
        (["--replicas", "2", "--autoscale", "1:2"], "not both"),
        (["--autoscale", "3:1"], "MIN:MAX"),
        (["--max-batch", "0"], "--max-batch"),
        (["--batch-wait-ms", "-1"], "--batch-wait-ms must be 0 or more"),
    ):
        assert main(["serve", "--checkpoint", str(tmp_path), *args]) == 2
        assert message in capsys.readouterr().err
    with monkeypatch.context() as env:
        env.setenv("PATH", str(tmp_path))  # no haproxy here
        assert main(["serve", "--checkpoint", str(tmp_path), "--ingress", "haproxy"]) == 2
        assert "--ingress haproxy: no haproxy on PATH" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown serve args"):
        from cg_ray.predict.serve import app_builder

        app_builder({"checkpoint": str(tmp_path), "tokn": "x"})


@pytest.mark.slow
def test_the_page_locates_a_chosen_video_on_the_map(server, model, tmp_path_factory):
    """The page at GET / in a real headless browser: Debian's chromium driven by Playwright
    (never a downloaded browser), on the module's server, which wants a token: a clip chosen
    without one shows the server's 401 message; with the token typed into the page's field it
    is answered with bars per level and a marker on the map. The screenshot is kept
    (tests/artifacts/serve_page.png, or $CG_RAY_ARTIFACTS). Last in the module: its requests
    come after the other tests' counts."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (make system-packages)")
    playwright = pytest.importorskip("playwright.sync_api")
    row = next(r for r in model["rows"] if r["city"] == "Chicago")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            page = browser.new_page()
            outside = []
            page.on(
                "request",
                lambda r: (
                    outside.append(r.url) if not r.url.startswith((server.url, "blob:", "data:")) else None
                ),
            )
            page.goto(server.url + "/")
            page.wait_for_selector("#map[data-ready='1']", timeout=30_000)
            page.set_input_files("#file", row["path"])  # no token yet: the server says what it wants
            page.wait_for_selector("#status.error", timeout=60_000)
            assert "Authorization: Bearer TOKEN" in page.inner_text("#status")
            page.fill("#token", TOKEN)
            page.dispatch_event("#token", "change")
            page.set_input_files("#file", [])
            page.set_input_files("#file", row["path"])
            page.wait_for_selector(".level[data-level='city'] .row.pick", timeout=60_000)

            assert page.inner_text("#answer-line").startswith("Most likely")
            assert "Chicago" in page.inner_text("#answer-line")
            for level in ("city", "state", "country", "continent"):
                rows = page.query_selector_all(f".level[data-level='{level}'] .row")
                assert 1 <= len(rows) <= 5
                assert page.query_selector(f".level[data-level='{level}'] .row.pick .bar div")
            assert page.evaluate("document.getElementById('player').src").startswith("blob:")
            # The marker: drawn at Chicago (41.9N, 87.6W) on the equirectangular map, in the
            # accent colour.
            marker = page.get_attribute("#map", "data-marker")
            x, y, city = marker.split(",")
            assert city == "Chicago"
            assert abs(int(x) - (180 - 87.63) / 360 * 1080) < 3 and abs(int(y) - (90 - 41.88) / 180 * 540) < 3
            pixel = page.evaluate(
                f"Array.from(document.getElementById('map').getContext('2d')"
                f".getImageData({x}, {y}, 1, 1).data)"
            )
            assert pixel[:3] == [0xD6, 0x33, 0x6C], pixel
            # Land is drawn from the package's mask: a pixel in the Sahara is land-coloured.
            sahara = page.evaluate(
                "Array.from(document.getElementById('map').getContext('2d')"
                ".getImageData(Math.round(195/360*1080), Math.round(67/180*540),"
                " 1, 1).data)"
            )
            assert sahara[:3] == [0xC9, 0xD3, 0xBF], sahara
            assert "The map could not" not in page.inner_text("#status")
            assert outside == [], f"the page asked for outside addresses: {outside}"

            os.makedirs(ARTIFACTS, exist_ok=True)
            shot = os.path.join(ARTIFACTS, "serve_page.png")
            page.screenshot(path=shot, full_page=True)
            print(f"screenshot: {shot}")
            assert os.path.getsize(shot) > 10_000

            # An upload the server refuses shows its message on the page.
            bad = tmp_path_factory.mktemp("bad") / "notes.txt"
            bad.write_text("not a video\n")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "not a video" in page.inner_text("#status")
        finally:
            browser.close()
    shutil.rmtree(profile, ignore_errors=True)
