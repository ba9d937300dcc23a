"""`ardiff serve` without a browser: the page's routes driven through FastAPI's test client on
tiny models. The grid and the streamed frames are the library's own output for the same seeds;
a schedule edited mid-stream reaches the next block not yet begun; every bad request is one line
and the server goes on; one generation runs at a time behind a bounded queue."""

import base64
import io
import json
import re
import threading

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ardiff import Pipeline
from ardiff.generate.stream import ClassVocabulary, PromptSchedule, StreamSettings, stream
from ardiff.models.checkpoint import save_pretrained
from ardiff.serve.queue import GenerationQueue, QueueFull
from ardiff.serve.studio import ModelAccess, RequestError, ServeLimits, Studio
from ardiff.utils.media import to_uint8
from helpers import tiny_model

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ardiff.serve.app import PAGE, create_app  # noqa: E402

IMAGE = dict(input_size=(32, 32), in_channels=1, patch_size=8, block_layout="raster", block_size=16, num_classes=10)
VIDEO = dict(input_size=(8, 32, 32), in_channels=1, patch_size=8, block_layout="raster", block_size=32,
             rope_axis_weights=(2, 1, 1), num_classes=10)
CLIP = {**VIDEO, "input_size": (4, 32, 32), "block_size": 64}  # a one-block corrector of 4-frame clips
FMNIST = {"name": "fashion_mnist"}
MOVING = {"name": "moving_fashion_mnist"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-models")
    save_pretrained(tiny_model(torch.float32, **IMAGE), root / "image",
                    extra_config={"_sampling": {"num_steps": 2, "cfg_scale": 2.0}, "_data": FMNIST})
    save_pretrained(tiny_model(torch.float32, seed=1, **IMAGE), root / "student",
                    extra_config={"_sampling": {"num_steps": 2, "cfg_scale": 1.0}, "_data": FMNIST,
                                  "_distillation": {"teacher": "image", "teacher_cfg_scale": 2.0}})
    save_pretrained(tiny_model(torch.float32, seed=2, **VIDEO), root / "video",
                    extra_config={"_sampling": {"num_steps": 2, "cfg_scale": 1.5}, "_data": MOVING})
    save_pretrained(tiny_model(torch.float32, seed=3, **CLIP), root / "sub" / "clip",
                    extra_config={"_sampling": {"num_steps": 2, "cfg_scale": 1.5}, "_data": MOVING})
    return root


@pytest.fixture(scope="module")
def client(root):
    studio = Studio(ModelAccess([root]), ServeLimits(max_frames=64, max_steps=50), device="cpu")
    with TestClient(create_app(studio)) as client:
        yield client


def png(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.array(Image.open(io.BytesIO(raw)))


def lines(response) -> list[dict]:
    return [json.loads(line) for line in response.iter_lines() if line]


def test_the_page_is_one_offline_file(client):
    page = client.get("/").text
    assert page == PAGE.read_text() and 'id="view-stream"' in page
    # Nothing is fetched from elsewhere: no absolute URL in any src, href or CSS import.
    assert not re.search(r"""(src|href)=["']?(https?:)?//|@import|url\(\s*["']?https?:""", page)
    assert client.get("/docs").status_code == 404  # FastAPI's docs page loads scripts from a CDN


def test_info_lists_the_shipped_models_and_the_allowed_directory(client, root):
    info = client.get("/api/info").json()
    views = {m["name"]: (m["view"], m["steps"], m["student"]) for m in info["models"]}
    assert views["fmnist-fast"] == ("images", 4, True) and views["moving-fmnist"][0] == "stream"
    assert views[str(root / "image")] == ("images", 2, False)
    assert views[str(root / "student")] == ("images", 2, True)
    assert views[str(root / "video")] == ("stream", 2, False)
    assert views[str(root / "sub" / "clip")] == ("video", 2, False)
    labels = {m["name"]: m["label"] for m in info["models"]}
    assert labels["fmnist"] == "fmnist" and labels[str(root / "sub" / "clip")] == f"{root.name}/sub/clip"
    assert info["limits"]["max_frames"] == 64 and info["queue"] == {"running": None, "waiting": 0}


def test_a_grid_is_the_pipelines_samples_for_those_seeds(client, root):
    r = client.post("/api/images", json={"model": str(root / "image"), "classes": ["sneaker", 3, "bag"],
                                         "steps": 2, "cfg": 2.0, "seed": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["captions"] == ["sneaker", "dress", "bag"] and body["seeds"] == [5, 6, 7] and body["seconds"] > 0
    expected = Pipeline.from_pretrained(root / "image", device="cpu")(torch.tensor([7, 3, 8]), seeds=[5, 6, 7])
    got = np.stack([png(u) for u in body["images"]])
    assert np.array_equal(got, to_uint8(expected)[:, 0])
    assert png(body["grid"]).shape[-1] == 3  # the captioned grid, RGB


@pytest.mark.parametrize("request_body, fragment", [
    ({"model": "/etc", "classes": [0]}, "outside the directories this server may load from"),
    ({"model": "{root}/../elsewhere", "classes": [0]}, "outside the directories"),
    ({"model": "{root}/image", "classes": [0], "steps": 0}, "steps: 0 is out of range; give 1..50"),
    ({"model": "{root}/image", "classes": [0], "steps": "many"}, "steps: 'many' is not a whole number"),
    ({"model": "{root}/image", "classes": ["hat"]}, "classes: "),
    ({"model": "{root}/image", "classes": []}, "classes: pick at least one class"),
    ({"model": "{root}/image", "classes": [0] * 65}, "at most 64 images"),
    ({"model": "{root}/student", "classes": [0], "cfg": 3}, "few-step student"),
    ({"model": "{root}/video", "classes": [0]}, "not a class-conditional image model"),
])
def test_a_bad_grid_request_is_one_line_and_the_server_goes_on(client, root, request_body, fragment):
    body = {k: v.replace("{root}", str(root)) if isinstance(v, str) else v for k, v in request_body.items()}
    r = client.post("/api/images", json=body)
    assert r.status_code == 400 and fragment in r.json()["error"] and "\n" not in r.json()["error"]
    assert client.post("/api/images", json={"model": str(root / "student"), "classes": [1]}).status_code == 200


@pytest.mark.parametrize("request_body, fragment", [
    ({"frames": 10000}, "frames: 10000 is out of range; give 1..64"),
    ({"frames": 0}, "frames: 0 is out of range"),
    ({"frames": 15}, "not whole blocks of 2 frames"),
    ({"prompts": "0:sneaker, 7:bag"}, "not on a block boundary"),
    ({"prompts": "4:sneaker"}, "must start at frame 0"),
    ({"prompts": "0:sneaker, 20:bag"}, "past the last frame"),
    ({"prompts": "0:hat"}, "prompts: "),
    ({"steps": 0}, "steps: 0 is out of range"),
    ({"model": "{root}/image"}, "not a class-conditional video model"),
    ({"correct": "every", "corrector": "/tmp"}, "outside the directories"),
    ({"switch": "jump"}, "switch: 'jump'; choose one of cut, continue"),
])
def test_a_bad_stream_request_is_one_line(client, root, request_body, fragment):
    body = {"model": str(root / "video"), "prompts": "0:sneaker, 8:bag", "frames": 16, **request_body}
    body = {k: v.replace("{root}", str(root)) if isinstance(v, str) else v for k, v in body.items()}
    r = client.post("/api/stream", json=body)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text
    assert client.post("/api/stream", json={"nonsense": True}).status_code == 400  # and still answering
    assert client.post("/api/images", content=b"not json", headers={"Content-Type": "application/json"}
                       ).json()["error"].startswith("the request body must be a JSON object")


def test_a_stream_hands_out_the_librarys_frames_block_by_block_and_its_mp4(client, root):
    body = {"model": str(root / "video"), "prompts": "0:sneaker, 8:bag", "frames": 16, "seed": 3, "switch": "continue"}
    with client.stream("POST", "/api/stream", json=body) as r:
        events = lines(r)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and kinds[1] == "start" and kinds[-1] == "done" and kinds.count("frames") == 8
    frames = [e for e in events if e["event"] == "frames"]
    assert [e["first_frame"] for e in frames] == list(range(0, 16, 2))
    assert [c for e in frames for c in e["classes"]] == ["sneaker"] * 8 + ["bag"] * 8
    pipe = Pipeline.from_pretrained(root / "video", device="cpu")
    schedule = PromptSchedule.parse("0:sneaker, 8:bag", ClassVocabulary.for_pipeline(pipe), 16, 2)
    expected = stream(pipe, schedule, StreamSettings(num_frames=16, seed=3, switch="continue")).frames[0]
    got = np.stack([png(u) for e in frames for u in e["frames"]])
    assert np.array_equal(got, to_uint8(expected)[:, 0])
    done = events[-1]
    assert done["frames"] == 16 and not done["stopped"] and 0 < done["first_frame_seconds"] <= done["seconds"]
    video = client.get(f"/api/stream/{events[0]['id']}/video.mp4")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(video.content)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16


def test_a_schedule_edited_mid_stream_reaches_the_next_block(client, root):
    body = {"model": str(root / "video"), "prompts": "0:sneaker", "frames": 24, "seed": 1}
    answers = []
    with client.stream("POST", "/api/stream", json=body) as r:
        events = []
        for line in r.iter_lines():
            if not line:
                continue
            events.append(json.loads(line))
            if events[-1]["event"] == "frames" and events[-1]["first_frame"] == 4:
                job = events[0]["id"]
                answers.append(client.post(f"/api/stream/{job}/schedule", json={"switch_now": "trouser"}).json())
                answers.append(client.post(f"/api/stream/{job}/schedule", json={"prompts": "0:sneaker, 3:bag"}))
    applied = answers[0]["applies_from"]
    assert applied in (6, 8) and answers[0]["prompts"] == f"0:sneaker, {applied}:trouser"
    assert answers[1].status_code == 400 and "block boundary" in answers[1].json()["error"]
    classes = [c for e in events if e["event"] == "frames" for c in e["classes"]]
    assert classes == ["sneaker"] * applied + ["trouser"] * (24 - applied)
    assert [e for e in events if e["event"] == "schedule"][0]["applies_from"] == applied
    # The edited stream is the library's stream of the schedule as it was made (a cut at the switch).
    pipe = Pipeline.from_pretrained(root / "video", device="cpu")
    schedule = PromptSchedule.parse(f"0:sneaker, {applied}:trouser", ClassVocabulary.for_pipeline(pipe), 24, 2)
    expected = stream(pipe, schedule, StreamSettings(num_frames=24, seed=1)).frames[0]
    got = np.stack([png(u) for e in events if e["event"] == "frames" for u in e["frames"]])
    assert np.abs(got.astype(int) - to_uint8(expected)[:, 0].astype(int)).max() <= 1
    after = client.post(f"/api/stream/{events[0]['id']}/schedule", json={"switch_now": "bag"})
    assert after.status_code == 400 and "already finished" in after.json()["error"]
    assert client.post("/api/stream/s999/stop").status_code == 404


def test_a_stopped_stream_ends_with_the_frames_made(client, root):
    body = {"model": str(root / "video"), "prompts": "0:sneaker", "frames": 64}
    with client.stream("POST", "/api/stream", json=body) as r:
        events = []
        for line in r.iter_lines():
            if line:
                events.append(json.loads(line))
                if events[-1]["event"] == "frames" and events[-1]["first_frame"] == 2:
                    assert client.post(f"/api/stream/{events[0]['id']}/stop").json() == {"stopped": True}
    done = events[-1]
    assert done["event"] == "done" and done["stopped"] and 4 <= done["frames"] < 64


def test_the_queue_runs_one_job_at_a_time_and_bounds_the_waiting():
    q = GenerationQueue(max_waiting=2)
    release, started = threading.Event(), threading.Event()
    first = q.submit(lambda: (started.set(), release.wait(10), "first")[-1], "first")
    assert started.wait(10)
    second = q.submit(lambda: "second", "second")
    third = q.submit(lambda: 1 / 0, "third")
    with pytest.raises(QueueFull, match="the queue is full"):
        q.submit(lambda: None, "fourth")
    assert q.status() == {"running": "first", "waiting": 2}
    assert (q.position(first), q.position(second), q.position(third)) == (0, 1, 2)
    assert q.cancel(second) and q.status()["waiting"] == 1 and q.position(third) == 1
    release.set()
    assert first.result(10) == "first" and second.cancelled()
    with pytest.raises(ZeroDivisionError):
        third.result(10)
    assert q.position(first) is None and q.status() == {"running": None, "waiting": 0}
    q.close(timeout=10)


def test_model_access_refuses_paths_outside_its_roots(root, tmp_path):
    access = ModelAccess([root])
    assert access.resolve("fmnist").name == "fmnist" and access.resolve(str(root / "image")) == root / "image"
    outside = tmp_path / "model"
    save_pretrained(tiny_model(torch.float32, **IMAGE), outside)
    (root / "link").symlink_to(outside)
    for bad in (str(outside), str(root / "link"), str(root / ".." / outside.name), "", "no-such-model"):
        with pytest.raises(RequestError):
            access.resolve(bad)
    with pytest.raises(RequestError, match="no config.json there"):
        access.resolve(str(root))
    with pytest.raises(ValueError, match="not a directory"):
        ModelAccess([tmp_path / "missing"])


def test_a_story_by_the_arm_and_by_acdc_with_the_readers_scores(client):
    story = "Meet Nova, a small red bag at the top left of a navy floor. It moves to the right."
    r = client.post("/api/story", json={"story": story, "memory": "state", "seed": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sentences"] == ["Meet Nova, a small red bag at the top left of a navy floor.",
                                 "It moves to the right."]
    assert body["prompts"] == ["a small red bag at the top left of a navy floor.",
                               "a small red bag at the top of a navy floor."]
    for row in ("arm", "acdc"):
        assert [png(u).shape for u in body["frames"][row]] == [(32, 32, 3)] * 2
        scores = body["scores"][row]
        assert len(scores["faithfulness"]) == 2 and all(0 <= v <= 1 for v in scores["faithfulness"])
        assert set(scores["read"][0]) == {"kind", "colour", "background", "size", "row", "col"}
    assert body["frames"]["arm"] != body["frames"]["acdc"] and body["truth"] is None
    bad = client.post("/api/story", json={"story": "Once upon a time. It flies."})
    assert bad.status_code == 400 and "not a story-world introduction" in bad.json()["error"]
    long = client.post("/api/story", json={"story": " ".join(["It moves."] * 13)})
    assert long.status_code == 400 and "at most 12" in long.json()["error"]


@pytest.mark.parametrize("correct", ["first", "every"])
def test_acdc_correction_of_the_first_or_every_chunk_is_the_librarys(client, root, correct):
    import dataclasses

    from ardiff.acdc.stream_correction import ChunkCorrection

    body = {"model": str(root / "video"), "prompts": "0:sneaker, 8:bag", "frames": 16, "seed": 2,
            "correct": correct, "corrector": str(root / "sub" / "clip"), "t_prime": 0.6}
    with client.stream("POST", "/api/stream", json=body) as r:
        events = lines(r)
    frames = [e for e in events if e["event"] == "frames"]
    assert events[-1]["event"] == "done" and [e["first_frame"] for e in frames] == [0, 4, 8, 12]  # 4-frame chunks
    pipe = Pipeline.from_pretrained(root / "video", device="cpu")
    schedule = PromptSchedule.parse("0:sneaker, 8:bag", ClassVocabulary.for_pipeline(pipe), 16, 2)
    correction = ChunkCorrection.from_pretrained(str(root / "sub" / "clip"), 0.6, device="cpu")
    if correct == "first":
        correction = dataclasses.replace(correction, max_chunks=1)
    settings = StreamSettings(num_frames=16, seed=2, switch="continue")
    expected = stream(pipe, schedule, settings, correction=correction).frames[0]
    got = np.stack([png(u) for e in frames for u in e["frames"]])
    assert np.array_equal(got, to_uint8(expected)[:, 0])
    plain = stream(pipe, schedule, settings).frames[0]
    assert not np.array_equal(got[:4], to_uint8(plain)[:4, 0])  # the first chunk was corrected


# ---------------------------------------------------------------------------
#                               The command
# ---------------------------------------------------------------------------
def test_the_command_serves_the_page_on_loopback(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "ardiff.cli", "serve", "--port", str(port), "--preload",
                               "fmnist-fast"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, info = time.time() + 60, None
        while time.time() < deadline and info is None:
            try:
                info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2))
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.2)
        assert info is not None and any(m["name"] == "fmnist-fast" for m in info["models"])
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<title>ardiff</title>" in page
    finally:
        server.terminate()
        out = server.communicate(timeout=30)[0]
    assert f"http://localhost:{port}/" in out


@pytest.mark.parametrize("argv, fragment", [
    (["--models", "/nonexistent"], "--models /nonexistent: not a directory"),
    (["--preload", "story-text"], "not a class-conditional image or video model"),
    (["--preload", "/etc"], "outside the directories"),
    (["--port", "70000"], "70000 is not a port"),
    (["--host", "999.1.1.1"], "not an address of this machine"),
])
def test_bad_command_input_is_one_line(argv, fragment, capsys):
    from ardiff.cli import main

    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(["serve", *argv]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_a_port_in_use_is_one_line(capsys):
    import socket

    from ardiff.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen there" in capsys.readouterr().err
