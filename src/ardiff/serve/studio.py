"""What the page does, without HTTP: which models it may load, the checks on every request, and
the three views' work (an image grid, a live stream, a story with and without ACDC).

Every request is a plain dict (the JSON the page posts) and every answer a dict of JSON types,
so the same handlers run under the server (:mod:`ardiff.serve.app`) and in tests. A bad
request raises :class:`RequestError` with one line that names the field and the fix; the
server shows it on the page and keeps running. Generation runs on one worker thread
(:class:`~ardiff.serve.queue.GenerationQueue`), one request at a time.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import itertools
import json
import queue
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ardiff.models.resolve import SHIPPED_MODELS, shipped_model_names
from ardiff.serve.queue import GenerationQueue, QueueFull

__all__ = ["ModelAccess", "RequestError", "ServeLimits", "StreamJob", "Studio"]

STORY_MEMORIES = ("state", "rule", "none")  # the LLM memory takes ~10 s a story on this CPU: CLI only
KEEP_FINISHED_STREAMS = 8  # finished streams whose MP4 stays downloadable


class RequestError(Exception):
    """A request the page made that cannot run as asked (HTTP 400; 503 when the queue is full)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on one request, so that no request holds the one worker for long."""

    max_images: int = 64
    max_steps: int = 100
    max_frames: int = 512
    max_story_sentences: int = 12
    max_waiting: int = 8  # requests waiting behind the one that runs


# ---------------------------------------------------------------------------
#                           Which models may load
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """What the page needs to offer a model: its view and its recorded sampling settings."""

    name: str  # a shipped name, or the model directory's full path (what requests give)
    label: str  # what the page shows: the name, or ROOT/relative/path for a directory under a root
    # "images": class-conditional image model; "stream": class-conditional video model of whole-frame
    # blocks trained on >= 2 blocks; "video": one-block video model (a corrector); "": none of these.
    view: str
    classes: list[str]
    steps: int
    cfg: float
    student: bool  # a few-step student: guidance distilled in, cfg 1 only
    frames_per_block: int = 0
    trained_frames: int = 0


class ModelAccess:
    """The shipped models and the model directories under the roots given on the command line;
    nothing else loads (a path elsewhere, or one that leaves a root through ``..`` or a link,
    is refused)."""

    def __init__(self, roots=()):
        self.roots = tuple(Path(r).resolve() for r in roots)
        for root in self.roots:
            if not root.is_dir():
                raise ValueError(f"--models {root}: not a directory; give directories that hold model directories")

    def resolve(self, name: str) -> Path:
        if not isinstance(name, str) or not name.strip():
            raise RequestError("model: give a shipped model name or a model directory under --models")
        name = name.strip()
        if name in shipped_model_names():
            return SHIPPED_MODELS / name
        path = Path(name).expanduser().resolve()
        if not any(path == root or root in path.parents for root in self.roots):
            allowed = ", ".join(map(str, self.roots)) if self.roots else "none given"
            raise RequestError(f"model {name!r}: not a shipped model ({', '.join(shipped_model_names())}), and the "
                               f"path is outside the directories this server may load from ({allowed}); start "
                               f"`ardiff serve --models DIR` to allow a directory")
        if not (path / "config.json").is_file():
            raise RequestError(f"model {name!r}: no config.json there; give a model directory (ardiff train writes "
                               f"RUN/model)")
        return path

    def listed(self) -> list[tuple[str, str, Path]]:
        """(name, label, directory): the shipped models, then model directories up to 3 levels under
        each root (training checkpoints left out)."""
        found = [(n, n, SHIPPED_MODELS / n) for n in shipped_model_names()]
        for root in self.roots:
            for depth in range(4):
                for config in sorted(root.glob("/".join(["*"] * depth + ["config.json"]))):
                    relative = config.parent.relative_to(root)
                    if "checkpoints" not in relative.parts:
                        found.append((str(config.parent), f"{root.name}/{relative}", config.parent))
        return found

    @staticmethod
    def vocabulary(directory: Path):
        """How prompts name the classes of the model in ``directory`` (a ClassVocabulary)."""
        from ardiff.generate.stream import ClassVocabulary

        config = json.loads((directory / "config.json").read_text())
        return ClassVocabulary.for_model(config.get("num_classes", 0), config.get("_data"))

    def info(self, name: str, directory: Path, label: str | None = None) -> ModelInfo:
        config = json.loads((directory / "config.json").read_text())
        sampling = config.get("_sampling") or {}
        size = config.get("input_size", [])
        num_classes = config.get("num_classes", 0)
        view, per_block = "", 0
        if num_classes and len(size) == 2:
            view = "images"
        elif num_classes and len(size) == 3:
            patch = config.get("patch_size", 2)
            tokens_per_frame = (size[1] // patch) * (size[2] // patch)
            block = config.get("block_size", 0)
            if block and block % tokens_per_frame == 0 and config.get("block_layout") == "raster":
                per_block = block // tokens_per_frame
                view = "stream" if size[0] // per_block >= 2 else "video"
        vocabulary = self.vocabulary(directory)
        return ModelInfo(name=name, label=label or name, view=view,
                         classes=[vocabulary.name(k) for k in range(num_classes)],
                         steps=int(sampling.get("num_steps", 25)), cfg=float(sampling.get("cfg_scale", 1.5)),
                         student=bool(config.get("_distillation")), frames_per_block=per_block,
                         trained_frames=size[0] if len(size) == 3 else 0)


# ---------------------------------------------------------------------------
#                               Request fields
# ---------------------------------------------------------------------------
def _int(request: dict, key: str, default: int | None, low: int, high: int, why: str = "") -> int:
    value = request.get(key, default)
    if value is None or value == "":
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise RequestError(f"{key}: {value!r} is not a whole number")
    value = int(value)
    if not low <= value <= high:
        raise RequestError(f"{key}: {value} is out of range; give {low}..{high}{why}")
    return value


def _float(request: dict, key: str, default: float | None, low: float, high: float) -> float | None:
    value = request.get(key, default)
    if value is None or value == "":
        return default
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{key}: {value!r} is not a number") from None
    if not low <= value <= high:
        raise RequestError(f"{key}: {value:g} is out of range; give {low:g}..{high:g}")
    return value


def _choice(request: dict, key: str, default: str, choices) -> str:
    value = request.get(key) or default
    if value not in choices:
        raise RequestError(f"{key}: {value!r}; choose one of {', '.join(choices)}")
    return value


def png_data_url(image) -> str:
    """(C, H, W) or (H, W, C) uint8 array / [-1, 1] tensor -> a data: URL of a PNG."""
    import numpy as np
    from PIL import Image

    from ardiff.utils.media import to_uint8

    if not isinstance(image, np.ndarray):
        image = to_uint8(image).transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------------------
#                               A live stream
# ---------------------------------------------------------------------------
@dataclass
class StreamJob:
    """One stream: its live schedule, the events for the page, and the MP4 written as it goes."""

    id: str
    model: str
    num_frames: int
    frames_per_block: int
    vocabulary: object  # ClassVocabulary
    live: object  # LiveSchedule
    mp4: Path
    events: queue.Queue = field(default_factory=queue.Queue)
    future: Future | None = None
    finished: bool = False

    def emit(self, kind: str, **data) -> None:
        self.events.put({"event": kind, **data})


# ---------------------------------------------------------------------------
#                                  The studio
# ---------------------------------------------------------------------------
class Studio:
    """The page's handlers over loaded models, one worker thread and the streams it runs."""

    def __init__(self, access: ModelAccess | None = None, limits: ServeLimits | None = None, device: str = "cpu",
                 work_dir: str | Path | None = None):
        self.access = access or ModelAccess()
        self.limits = limits or ServeLimits()
        self.device = device
        self.queue = GenerationQueue(self.limits.max_waiting)
        self._own_work_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="ardiff-serve-") if work_dir is None else work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._pipelines: dict[Path, object] = {}
        self._corrections: dict[tuple[Path, float], object] = {}
        self._story = None
        self._streams: dict[str, StreamJob] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def close(self) -> None:
        for job in list(self._streams.values()):
            job.live.stop()
        self.queue.close(timeout=60)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- what the page offers ------------------------------------------------------
    def info(self) -> dict:
        models = []
        for name, label, directory in self.access.listed():
            try:
                models.append(asdict(self.access.info(name, directory, label)))
            except (OSError, ValueError, KeyError):
                continue  # a damaged directory is not offered
        return {"models": models, "limits": asdict(self.limits), "queue": self.queue.status(),
                "story_memories": list(STORY_MEMORIES), "device": str(self.device)}

    def _run(self, work, label: str) -> Future:
        try:
            return self.queue.submit(work, label)
        except QueueFull as e:
            raise RequestError(str(e), status=503) from None

    def _pipeline(self, directory: Path):
        """The model as recorded, loaded once (on the worker thread)."""
        if directory not in self._pipelines:
            from ardiff.generate.pipeline import Pipeline

            self._pipelines[directory] = Pipeline.from_pretrained(directory, device=self.device)
        return self._pipelines[directory]

    def _settings_pipeline(self, directory: Path, steps: int | None, cfg: float | None):
        """The loaded model under these settings (checked: a student refuses guidance)."""
        from ardiff.generate.pipeline import Pipeline

        base = self._pipeline(directory)
        try:
            return Pipeline(base.model, base.settings.but(num_steps=steps, cfg_scale=cfg), base.vae, base.vae_record,
                            base.guide, extras=base.extras, source=base.source)
        except ValueError as e:
            raise RequestError(str(e)) from None

    def preload(self, *names: str) -> None:
        """Load models before the first request (so the first frame is not a model load)."""
        for name in names:
            directory = self.access.resolve(name)
            if not self.access.info(name, directory).view:
                raise RequestError(f"model {name!r} is not a class-conditional image or video model; the page "
                                   f"samples those (the story view loads the story models itself)")
            self._run(lambda directory=directory: self._pipeline(directory), f"loading {name}").result()

    # -- Images --------------------------------------------------------------------
    def check_images(self, request: dict) -> dict:
        directory = self.access.resolve(request.get("model", ""))
        info = self.access.info(str(request.get("model")), directory)
        if info.view != "images":
            raise RequestError(f"model {request.get('model')!r} is not a class-conditional image model; the Images "
                               f"view draws fmnist-like models (video models stream in the Stream view)")
        classes = request.get("classes")
        if isinstance(classes, str):
            classes = [c for c in re.split(r"[,\s]+", classes) if c]
        if not classes:
            raise RequestError("classes: pick at least one class")
        if not isinstance(classes, list) or len(classes) > self.limits.max_images:
            raise RequestError(f"classes: at most {self.limits.max_images} images a request")
        vocabulary = self.access.vocabulary(directory)
        ids = []
        for c in classes:
            try:
                ids.append(vocabulary(str(c)))
            except ValueError as e:
                raise RequestError(f"classes: {e}") from None
        return dict(directory=directory, ids=ids, names=[vocabulary.name(k) for k in ids],
                    steps=_int(request, "steps", info.steps, 1, self.limits.max_steps),
                    cfg=_float(request, "cfg", info.cfg, 0.0, 20.0),
                    seed=_int(request, "seed", 0, 0, 2**31 - 1))

    def images(self, request: dict) -> Future:
        """Queue a class grid; the future's result: the PNG grid, captions, seconds, settings."""
        job = self.check_images(request)

        def work():
            import torch

            from ardiff.utils.media import captioned_grid

            pipe = self._settings_pipeline(job["directory"], job["steps"], job["cfg"])
            t0 = time.perf_counter()
            seeds = list(range(job["seed"], job["seed"] + len(job["ids"])))
            images = pipe(torch.tensor(job["ids"]), seeds=seeds)
            seconds = time.perf_counter() - t0
            grid = captioned_grid(images, nrow=min(8, len(images)), scale=3, captions=job["names"])
            return {"grid": png_data_url(grid), "images": [png_data_url(x) for x in images],
                    "captions": job["names"], "seeds": seeds, "seconds": round(seconds, 3),
                    "settings": pipe.describe()}

        return self._run(work, f"images: {len(job['ids'])} of {Path(job['directory']).name}")

    # -- Stream --------------------------------------------------------------------
    def start_stream(self, request: dict) -> StreamJob:
        """Check a stream request and queue it; events arrive on the job's queue."""
        from ardiff.generate.stream import LiveSchedule, StreamSettings
        from ardiff.models.checkpoint import load_config

        name = request.get("model", "")
        directory = self.access.resolve(name)
        info = self.access.info(str(name), directory)
        if info.view != "stream":
            raise RequestError(f"model {name!r} is not a class-conditional video model of whole-frame blocks; the "
                               f"Stream view streams moving-fmnist-like models")
        per_block = info.frames_per_block
        frames = _int(request, "frames", 48, 1, self.limits.max_frames)
        if frames % per_block:
            raise RequestError(f"frames: {frames} is not whole blocks of {per_block} frames; give a multiple of "
                               f"{per_block}")
        config = load_config(directory)
        vocabulary = self.access.vocabulary(directory)
        schedule = self._schedule(request.get("prompts"), vocabulary, frames, per_block)
        steps = _int(request, "steps", info.steps, 1, self.limits.max_steps)
        cfg = _float(request, "cfg", info.cfg, 0.0, 20.0)
        correct = _choice(request, "correct", "off", ("off", "first", "every"))
        switch = _choice(request, "switch", "cut", ("cut", "continue"))
        correction = None
        if correct != "off":
            switch = "continue"  # ACDC hands the corrected chunk on as context
            corrector = self.access.resolve(request.get("corrector") or "moving-fmnist-16-dit")
            t_prime = _float(request, "t_prime", 0.5, 0.01, 1.0)
            from ardiff.acdc.stream_correction import check_corrector

            try:
                check_corrector(load_config(corrector), config, frames, schedule, corrector.name)
            except ValueError as e:
                raise RequestError(f"corrector: {e}") from None
            correction = (corrector, t_prime, correct)
        seed = _int(request, "seed", 0, 0, 2**31 - 1)
        settings = StreamSettings(num_frames=frames, seed=seed, switch=switch)
        try:
            settings = settings.for_model(config)
        except ValueError as e:
            raise RequestError(str(e)) from None
        with self._lock:
            job_id = f"s{next(self._ids)}"
        job = StreamJob(id=job_id, model=str(name), num_frames=frames, frames_per_block=per_block,
                        vocabulary=vocabulary, live=LiveSchedule(schedule, frames, per_block),
                        mp4=self.work_dir / f"{job_id}.mp4")
        job.future = self._run(lambda: self._stream(job, directory, steps, cfg, settings, correction),
                               f"stream {job_id}: {frames} frames of {directory.name}")
        with self._lock:
            self._streams[job_id] = job
            finished = [j for j in self._streams.values() if j.finished]
            for old in finished[:-KEEP_FINISHED_STREAMS]:
                self._streams.pop(old.id, None)
                old.mp4.unlink(missing_ok=True)
        return job

    def _schedule(self, text, vocabulary, frames: int, per_block: int):
        from ardiff.generate.stream import PromptSchedule

        if not isinstance(text, str) or not text.strip():
            raise RequestError('prompts: give a schedule of FRAME:PROMPT entries, e.g. "0:sneaker, 24:bag"')
        if len(text) > 2000:
            raise RequestError("prompts: the schedule is over 2000 characters")
        try:
            return PromptSchedule.parse(text, vocabulary, frames, per_block)
        except ValueError as e:
            raise RequestError(f"prompts: {e}") from None

    def stream_job(self, job_id: str) -> StreamJob:
        job = self._streams.get(job_id)
        if job is None:
            raise RequestError(f"stream {job_id!r}: no such stream (finished streams are kept for the last "
                               f"{KEEP_FINISHED_STREAMS})", status=404)
        return job

    def edit_stream(self, job_id: str, prompts=None, switch_now: str | None = None) -> dict:
        """Replace a running stream's schedule (``prompts``), or switch to the prompt ``switch_now``
        at the next block not yet begun; says from which frame the change applies."""
        job = self.stream_job(job_id)
        if job.finished:
            raise RequestError(f"stream {job_id}: already finished; start a new one")
        if switch_now is not None:
            if not isinstance(switch_now, str) or not switch_now.strip():
                raise RequestError("switch_now: name the class to switch to")
            at = job.live.next_frame
            if at >= job.num_frames:
                raise RequestError("switch_now: the stream has begun its last block; nothing is left to switch")
            kept = [s for s in job.live.schedule.switches if s.frame < at]
            prompts = ", ".join([*(f"{s.frame}:{s.prompt}" for s in kept), f"{at}:{switch_now.strip()}"])
        schedule = self._schedule(prompts, job.vocabulary, job.num_frames, job.frames_per_block)
        try:
            first = job.live.update(schedule)
        except ValueError as e:
            raise RequestError(f"prompts: {e}") from None
        job.emit("schedule", applies_from=first, prompts=schedule.to_text(),
                 schedule=schedule.describe(job.num_frames, job.vocabulary))
        return {"applies_from": first, "prompts": schedule.to_text()}

    def stop_stream(self, job_id: str) -> dict:
        job = self.stream_job(job_id)
        job.live.stop()
        if job.future is not None and self.queue.cancel(job.future):
            job.finished = True
            job.emit("done", frames=0, stopped=True)
        return {"stopped": True}

    def _stream(self, job: StreamJob, directory: Path, steps, cfg, settings, correction) -> None:
        from ardiff.generate.stream import stream
        from ardiff.utils.media import Mp4Writer, captioned_grid

        try:
            pipe = self._settings_pipeline(directory, steps, cfg)
            chunk_correction = None
            if correction is not None:
                from ardiff.acdc.stream_correction import ChunkCorrection

                corrector, t_prime, which = correction
                key = (corrector, t_prime)
                if key not in self._corrections:
                    self._corrections[key] = ChunkCorrection.from_pretrained(str(corrector), t_prime,
                                                                             device=self.device)
                chunk_correction = self._corrections[key]
                if which == "first":
                    chunk_correction = dataclasses.replace(chunk_correction, max_chunks=1)
            job.emit("start", settings=pipe.describe(), context=settings.describe(pipe.config))
            t0 = time.perf_counter()

            def on_frames(frames, first_frame: int) -> None:
                # The class each frame was made under: the schedule as it stood when its block
                # began (an edit reaches only blocks not yet begun).
                per_block = job.frames_per_block
                classes = [job.vocabulary.name(job.live.made_prompts[(first_frame + j) // per_block].class_id)
                           for j in range(frames.shape[1])]
                for j in range(frames.shape[1]):
                    writer.write(captioned_grid(frames[:, j], scale=4, captions=[classes[j]]))
                job.emit("frames", first_frame=first_frame, frames=[png_data_url(f) for f in frames[0]],
                         classes=classes, seconds=round(time.perf_counter() - t0, 4))

            with Mp4Writer(job.mp4, fps=8) as writer:
                result = stream(pipe, job.live, settings, correction=chunk_correction, on_frames=on_frames)
            job.emit("done", frames=result.num_frames, stopped=result.num_frames < job.num_frames,
                     first_frame_seconds=result.first_frame_seconds, seconds=round(result.total_seconds, 3),
                     fps=round(result.frames_per_second, 2), correction_seconds=round(result.correction_seconds, 3))
        except Exception as e:  # shown on the page; the worker goes on
            job.emit("error", message=str(e) or type(e).__name__)
        finally:
            job.finished = True

    # -- Story ---------------------------------------------------------------------
    def check_story(self, request: dict) -> dict:
        """A story in the world's grammar (or a random one's index), the memory, t' and the seed."""
        from ardiff.worlds.story import read_story_states

        memory = _choice(request, "memory", "state", STORY_MEMORIES)
        t_prime = _float(request, "t_prime", 0.5, 0.01, 1.0)
        seed = _int(request, "seed", 0, 0, 2**31 - 1)
        text = request.get("story") or ""
        if not isinstance(text, str):
            raise RequestError("story: give the story's sentences as text")
        sentences = [s.strip() for s in re.findall(r"[^.!?\n]+[.!?]?", text) if s.strip()]
        index = None
        if not sentences:
            index = _int(request, "index", 0, 0, 9999)
        else:
            if len(sentences) > self.limits.max_story_sentences:
                raise RequestError(f"story: {len(sentences)} sentences; at most {self.limits.max_story_sentences} "
                                   f"(one frame each)")
            try:
                read_story_states(sentences)
            except ValueError as e:  # the reader scores frames against the states the text describes
                reason = str(e).partition("; the state memory")[0]
                raise RequestError(f"story: {reason}; the page takes stories in the story world's grammar (draw a "
                                   f"random story to see it)") from None
        return dict(sentences=sentences, index=index, memory=memory, t_prime=t_prime, seed=seed)

    def _story_models(self) -> dict:
        if self._story is None:
            from ardiff.acdc.native import NativeCorrector
            from ardiff.generate.pipeline import Pipeline
            from ardiff.worlds.reader import AttributeReader
            from ardiff.worlds.text import StoryTextEncoder

            encoder = StoryTextEncoder.from_pretrained("story-text")
            corrector = Pipeline.from_pretrained("story-corrector", device=self.device)
            self._story = dict(
                encoder=encoder, reader=AttributeReader.from_pretrained("story-reader"),
                arm=Pipeline.from_pretrained("story-arm", device=self.device), corrector_pipe=corrector,
                corrector=NativeCorrector(corrector.model, encoder.encode, num_steps=corrector.settings.num_steps,
                                          cfg_scale=corrector.settings.cfg_scale))
        return self._story

    def story(self, request: dict) -> Future:
        """Queue a story: the ARM's frames beside ARM + ACDC's (same seed), the memory's prompts,
        and the story reader's per-frame scores against the states the text describes."""
        job = self.check_story(request)

        def work():
            from ardiff.experiments.story_benchmark import joined_story_frames, story_memory
            from ardiff.utils.seeding import item_seed
            from ardiff.worlds.story import read_story_states

            m = self._story_models()
            sentences, truth = job["sentences"], None
            if not sentences:
                from ardiff.worlds.story import StoryWorld

                try:
                    world = StoryWorld("test", length=6, seed=0)
                except FileNotFoundError as e:
                    raise RequestError(f"a random story needs the story world's Fashion-MNIST items ({e}); write "
                                       f"a story instead") from None
                story = world.story(job["index"])
                sentences, truth = story.sentences, world.render(story).transpose(0, 1)
            states = read_story_states(sentences)
            memory = story_memory(job["memory"])
            prompts = memory.rewrite(sentences)
            trained = m["arm"].config.num_blocks
            long = len(sentences) > trained
            window = dict(window=4, sink_blocks=1) if long else {}
            seeds = [item_seed(job["seed"], 0)]
            rows, seconds = {}, {}
            for row, corrected in (("arm", set()), ("acdc", set(range(len(sentences))))):
                t0 = time.perf_counter()
                rows[row] = joined_story_frames(m["arm"], m["encoder"], m["corrector"], [sentences], [prompts],
                                                corrected, seeds, job["t_prime"], **window)[0]
                seconds[row] = round(time.perf_counter() - t0, 3)
            return {"sentences": sentences, "prompts": prompts, "captions": [s.caption() for s in states],
                    "memory": job["memory"], "t_prime": job["t_prime"], "seed": job["seed"],
                    "index": job["index"], "window": window or None, "seconds": seconds,
                    "frames": {row: [png_data_url(f) for f in frames] for row, frames in rows.items()},
                    "truth": None if truth is None else [png_data_url(f) for f in truth],
                    "scores": {row: story_frame_scores(m["reader"], frames, states) for row, frames in rows.items()}}

        return self._run(work, f"story ({len(job['sentences']) or 'random'})")


def story_frame_scores(reader, frames, states) -> dict:
    """The story reader on every frame: the share of attributes drawn as the text says
    (faithfulness), and whether the subject is still the first frame's kind and colour (identity)."""
    from ardiff.experiments.story_benchmark import attribute_hits
    from ardiff.worlds.reader import READ_ATTRIBUTES

    preds, _ = reader.read(frames)
    correct, identity = attribute_hits(preds, states, [states[0]] * len(states))  # (attributes, F), (F,)
    read = [{a: READ_ATTRIBUTES[a][int(preds[a][f])] for a in READ_ATTRIBUTES} for f in range(len(states))]
    return {"faithfulness": [round(v, 3) for v in correct.mean(0).tolist()],
            "identity": [bool(v) for v in identity.tolist()], "read": read,
            "mean_faithfulness": round(correct.mean().item(), 3)}
