"""One training loop from a single CPU process to many GPUs (torchrun + DDP or FSDP2).

Determinism: the data order of every epoch and all training randomness of every step
(timesteps, noise, CFG dropout) are pure functions of (seed, epoch) and (seed, step),
drawn for the *global* batch and sliced per process and micro-batch. A resumed run, a
run split over more processes, or with more accumulation steps, sees exactly the same
samples and noise; on CPU an interrupted and resumed run is bit-identical to an
uninterrupted one (tested).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from ardiff.data.latents import VAERecord
from ardiff.diffusion.schedule import DiffusionLoss, draw_training_randomness
from ardiff.models.acdit import ACDiT
from ardiff.models.resolve import resolve_model_dir
from ardiff.train import checkpoint as ckpt
from ardiff.train.config import RunConfig
from ardiff.utils.devices import default_device
from ardiff.utils.io import replace_directory
from ardiff.utils.seeding import EXAMPLE_DRAW_STREAM, POSTERIOR_STREAM, TRAINING_NOISE_STREAM, hashed_seed
from ardiff.utils.seeding import generator as seeded


class NonFiniteLossError(RuntimeError):
    pass


def wsd_lr_factor(step: int, total: int, warmup: int, decay_fraction: float) -> float:
    """Warmup-stable-decay: linear warmup, constant, linear decay to 0 over the last fraction."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    decay_steps = int(round(total * decay_fraction))
    decay_start = total - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return max(0.0, (total - step) / decay_steps)
    return 1.0


def initialise_from(model: ACDiT, directory: str) -> None:
    """Copy every weight of the model saved in ``directory`` into ``model`` (fine-tuning).

    ``directory`` is a save_pretrained directory or the name of a built-in model (``fmnist``).

    Names and shapes must match exactly; buffers that the config derives (RoPE tables)
    are not weights and may differ, so an image model can start a video model of the same
    width and depth.
    """
    from safetensors.torch import load_file

    try:
        path = resolve_model_dir(directory) / "model.safetensors"
    except FileNotFoundError:
        path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from={directory!r}: no model.safetensors there "
                                f"(point it at a directory written by save_pretrained, e.g. runs/NAME/model)")
    source = {k: v for k, v in load_file(str(path)).items() if not k.startswith("_")}
    target = dict(model.named_parameters())
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    mismatched = [f"{k}: {tuple(source[k].shape)} vs {tuple(p.shape)}" for k, p in target.items()
                  if k in source and source[k].shape != p.shape]
    if missing or unexpected or mismatched:
        details = "; ".join(filter(None, [
            missing and f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}",
            unexpected and f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}",
            mismatched and f"shape mismatch {mismatched[:4]}{'...' if len(mismatched) > 4 else ''}",
        ]))
        raise ValueError(f"train.init_from={directory!r} does not fit this model ({details}); "
                         f"the source must have the same hidden_size, depth, heads, patch size, channels and classes")
    with torch.no_grad():
        for k, p in target.items():
            p.copy_(source[k].to(p.dtype))


def model_record(run: RunConfig) -> dict:
    """What an exported model carries beside its weights: the run's sampling settings
    (`ardiff sample` / eval / demo defaults) and its data (eval draws its reference clips
    from the same data)."""
    return {"_sampling": run.sample.settings().to_dict(), "_data": dataclasses.asdict(run.data)}


def model_condition(model_config, y):
    """What a batch's labels mean to the model: None for an unconditional one."""
    return None if model_config.num_classes == 0 and model_config.cond_dim == 0 else y


class Trainer:
    def __init__(self, run: RunConfig, dataset=None, resume: bool = False, device: str | None = None,
                 progress: bool = True):
        if run.distill is not None and type(self) is Trainer:
            raise ValueError("this run has a distill section: build it with ardiff.train.make_trainer (a Distiller)")
        self.run = run
        self.cfg = run.train
        self._setup_distributed(device)
        self.out = Path(self.cfg.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.progress = progress and self.is_main

        self.dataset = self.build_dataset() if dataset is None else dataset
        self._check_dataset()
        if run.model.attention_backend == "flex" and self.device.type != "cuda":
            raise ValueError(f"model.attention_backend=flex trains only on CUDA (FlexAttention has no backward on "
                             f"{self.device.type}); set model.attention_backend=auto or sdpa")
        self.example_weights = self._example_weights()
        # Latent datasets record their VAE: exported models and sample grids decode with it.
        meta = getattr(self.dataset, "meta", None)
        self.vae = VAERecord.from_cache_meta(meta)
        self._vae = None

        torch.manual_seed(self.cfg.seed)  # weight init
        self.model = ACDiT(run.model).to(self.device)
        if self.cfg.init_from and not resume:
            initialise_from(self.model, self.cfg.init_from)
        if self.cfg.activation_checkpointing:
            self.model.gradient_checkpointing = True
        # FSDP2 swaps parameters for DTensors here
        self.objective = self._wrap(self.build_objective())
        self.names = {p: n for n, p in self.model.named_parameters()}
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2),
            weight_decay=self.cfg.weight_decay,
        )
        self.ema = {n: p.detach().clone().float() for n, p in self.model.named_parameters()}
        self.step = 0
        self.tb = None
        if resume:
            self._resume()
        if self.cfg.compile:
            for block in self.model.blocks:
                block.compile()

    # -- set-up -------------------------------------------------------------------------
    def build_dataset(self):
        """The training data (the run's ``data`` section)."""
        from ardiff.train.datasets import build_dataset

        return build_dataset(self.run.data, self.run.model)

    def build_objective(self) -> torch.nn.Module:
        """The loss as one module (wrapped for DDP/FSDP): epsilon- (or v-) prediction MSE."""
        return DiffusionLoss(self.model, self.cfg.block_loss_weights, self.cfg.timestep_weighting, self.cfg.p2_k,
                             self.cfg.p2_gamma)

    def _setup_distributed(self, device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = default_device(None, local_rank)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = self.cfg.tf32
            torch.backends.cudnn.allow_tf32 = self.cfg.tf32
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.is_main = self.rank == 0
        per_rank = self.cfg.batch_size / (self.world * self.cfg.grad_accum)
        if per_rank != int(per_rank):
            raise ValueError(f"train.batch_size={self.cfg.batch_size} is not divisible by processes ({self.world}) "
                             f"x train.grad_accum ({self.cfg.grad_accum})")
        self.micro_batch = int(per_rank)

    def _check_dataset(self):
        if len(self.dataset) == 0:
            raise ValueError("the training dataset is empty")
        x, _ = self.dataset[0]
        expected = (self.run.model.in_channels, *self.run.model.input_size)
        if tuple(x.shape) != expected:
            raise ValueError(f"dataset samples have shape {tuple(x.shape)} but the model expects {expected} "
                             f"(set model.input_size / model.in_channels or the data options to match)")

    def _example_weights(self) -> torch.Tensor | None:
        """Sampling weight of every example from ``train.class_weights`` (None: plain epochs)."""
        if self.cfg.class_weights is None:
            return None
        if not hasattr(self.dataset, "class_labels"):
            raise ValueError(f"train.class_weights needs a dataset that knows each example's class "
                             f"(fashion_mnist, moving_fashion_mnist); {type(self.dataset).__name__} does not. "
                             f"Remove train.class_weights.")
        labels = torch.as_tensor(self.dataset.class_labels())
        weights = torch.tensor(self.cfg.class_weights, dtype=torch.float64)[labels]
        if weights.sum() <= 0:
            raise ValueError(f"train.class_weights={self.cfg.class_weights} gives every example of this dataset "
                             f"weight 0; give a positive weight to a class it holds")
        return weights

    def _wrap(self, objective):
        if self.world == 1:
            return objective
        if self.cfg.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in self.model.blocks:
                fully_shard(block)
            fully_shard(objective)
            return objective
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(objective, device_ids=ids)

    # -- data order and randomness: pure functions of (seed, step) -----------------------------
    def global_indices(self, step: int) -> torch.Tensor:
        n, B = len(self.dataset), self.cfg.batch_size
        if self.example_weights is not None:  # class-weighted: a with-replacement draw per step
            g = seeded(hashed_seed(self.cfg.seed, EXAMPLE_DRAW_STREAM, step))
            return torch.multinomial(self.example_weights, B, replacement=True, generator=g)
        start, out = step * B, []
        while len(out) < B:
            epoch, offset = divmod(start + len(out), n)
            perm = torch.randperm(n, generator=seeded(hashed_seed(self.cfg.seed, epoch)))
            out.extend(perm[offset : offset + B - len(out)].tolist())
        return torch.tensor(out)

    def batch(self, indices: torch.Tensor, step: int | None = None, first: int = 0):
        """Items ``indices`` (global batch positions ``first``, ``first + 1``, ...). A latent cache
        with moments gives a fresh posterior sample per (step, position): the same whatever
        process or accumulation step the position lands in."""
        if step is not None and getattr(self.dataset, "moments", False):
            items = [self.dataset.draw(int(i), seeded(hashed_seed(self.cfg.seed, POSTERIOR_STREAM, step, first + k)))
                     for k, i in enumerate(indices)]
        else:
            items = [self.dataset[int(i)] for i in indices]
        x = torch.stack([it[0] for it in items]).to(self.device)
        y = torch.stack([torch.as_tensor(it[1]) for it in items]).to(self.device)
        return x, y

    def _condition(self, y):
        return model_condition(self.run.model, y)

    # -- the loop --------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> dict:
        """Train until ``train.steps`` (or ``max_steps`` more steps: an interruption)."""
        cfg = self.cfg
        end = cfg.steps if max_steps is None else min(cfg.steps, self.step + max_steps)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        metrics_path = self.out / "metrics.jsonl"
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "run_config.json").write_text(json.dumps(self.run.to_dict(), indent=2))
        last = {}
        t_last, steps_since_log = time.perf_counter(), 0
        while self.step < end:
            loss = self.train_step()
            self.step += 1
            steps_since_log += 1
            if self.is_main and (self.step % cfg.log_every == 0 or self.step == end):
                now = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                last = {"step": self.step, "loss": loss, "lr": lr,
                        "samples_per_s": cfg.batch_size * steps_since_log / max(now - t_last, 1e-9),
                        **self.extra_metrics()}
                t_last, steps_since_log = now, 0
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(last) + "\n")
                self._tensorboard_scalars(last)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step != cfg.steps:
                self.sample_grid()
        if bar is not None:
            bar.close()
        if self.step == cfg.steps:
            self.export()
            self.sample_grid()
        if self.tb is not None:
            self.tb.flush()
        return last

    def train_step(self) -> float:
        cfg = self.cfg
        factor = wsd_lr_factor(self.step, cfg.steps, cfg.warmup_steps, cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        indices = self.global_indices(self.step)
        randomness = self.draw_step_randomness(seeded(hashed_seed(cfg.seed, TRAINING_NOISE_STREAM, self.step)))
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if cfg.precision == "bf16" and self.device.type == "cuda" else nullcontext())
        for micro in range(cfg.grad_accum):
            lo = (self.rank * cfg.grad_accum + micro) * self.micro_batch
            sl = slice(lo, lo + self.micro_batch)
            sync = (nullcontext() if micro == cfg.grad_accum - 1 or not hasattr(self.objective, "no_sync")
                    else self.objective.no_sync())
            with sync, autocast:
                loss = self.micro_loss(indices[sl], self.step, lo, [r[sl] for r in randomness]) / cfg.grad_accum
            loss.backward()
            total += loss.detach()
        if self.world > 1:
            dist.all_reduce(total)
            total /= self.world
        value = total.item()
        if not math.isfinite(value):
            latest = ckpt.latest_checkpoint(self.ckpt_root)
            raise NonFiniteLossError(
                f"loss became {value} at step {self.step + 1}; training stopped without saving. "
                f"Last good checkpoint: {latest or 'none yet'}. Lower train.lr, enable train.grad_clip, "
                f"or check the data for NaN/Inf."
            )
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self._update_ema()
        return value

    def draw_step_randomness(self, generator) -> tuple[torch.Tensor, ...]:
        """All of a step's randomness for the global batch (each sliced per sample): timesteps,
        noise and condition dropout."""
        return draw_training_randomness(self.run.model, self.cfg.batch_size, generator, self.device,
                                        cond_drop_prob=self.cfg.class_dropout)

    def micro_loss(self, indices, step: int, first: int, randomness) -> torch.Tensor:
        """The loss of the items ``indices`` (global batch positions ``first``...) with their randomness."""
        x, y = self.batch(indices, step, first)
        t, noise, drop = randomness
        return self.objective(x, self._condition(y), t, noise, drop)

    def extra_metrics(self) -> dict:
        """Further scalars of the last step a subclass logs beside the loss (metrics.jsonl, TensorBoard)."""
        return {}

    def ema_decay(self, step: int) -> float:
        """Constant decay, or with warm-up the average starts short and grows, so early
        EMA weights are not dominated by the (zero-initialised) starting point."""
        cfg = self.cfg
        if cfg.ema_warmup_steps > 0:
            return min(cfg.ema_decay, (1 + step) / (cfg.ema_warmup_steps + step))
        return cfg.ema_decay

    @torch.no_grad()
    def _update_ema(self):
        params = [p.detach().float() for p in self.model.parameters()]
        torch._foreach_lerp_(list(self.ema.values()), params, 1.0 - self.ema_decay(self.step))

    # -- checkpoints ------------------------------------------------------------------------
    def _states(self):
        model_state = {n: ckpt.full_tensor(p.detach()).cpu() for n, p in self.model.named_parameters()}
        ema_state = {n: ckpt.full_tensor(t).cpu() for n, t in self.ema.items()}
        opt_tensors, opt_steps = ckpt.optimizer_tensors(self.optimizer, self.names)
        return model_state, ema_state, opt_tensors, opt_steps

    def save_checkpoint(self) -> Path | None:
        model_state, ema_state, opt_tensors, opt_steps = self._states()  # collective under FSDP
        path = None
        if self.is_main:
            state = {"step": self.step, "optimizer_steps": opt_steps, "world_size": self.world,
                     "run_config": self.run.to_dict(), "torch": torch.__version__}
            extra_files, extra_state = self.extra_checkpoint()
            if extra_state:
                state["extra"] = extra_state
            path = ckpt.write_checkpoint(self.ckpt_root, self.step, model_state, ema_state, opt_tensors, state,
                                         self.run.model.to_dict(), self.cfg.keep_checkpoints, extra_files)
        if self.world > 1:
            dist.barrier()
        return path

    def _resume(self):
        path = ckpt.latest_checkpoint(self.ckpt_root)
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {self.ckpt_root}")
        try:
            data = ckpt.read_checkpoint(path)
        except ValueError as error:
            good = ckpt.newest_readable_checkpoint(self.ckpt_root, older_than=path)
            fix = (f"the newest good checkpoint is {good}: move the damaged one out of {self.ckpt_root} "
                   f"(e.g. mv {path} {self.out / ('damaged_' + path.name)}) and run --resume again" if good else
                   "no older checkpoint reads back either: start the run again without --resume")
            raise ValueError(f"--resume: the newest checkpoint is damaged ({error}); {fix}") from None
        if data["config"] != self.run.model.to_dict():
            raise ValueError(f"--resume: the model config in {path} differs from this run's model config")
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(ckpt.like(p, data["model"][n]))
            for n in self.ema:
                self.ema[n] = ckpt.like(self.ema[n], data["ema"][n])
        ckpt.load_optimizer_tensors(self.optimizer, self.names, data["optimizer"],
                                    data["trainer_state"]["optimizer_steps"])
        self.load_extra_checkpoint(data["extra"], data["trainer_state"].get("extra", {}))
        self.step = data["trainer_state"]["step"]
        if self.is_main:
            print(f"resumed from {path} at step {self.step}")

    def extra_checkpoint(self) -> tuple[dict, dict]:
        """What a subclass keeps beside the model: tensor files ``{stem: tensors}`` and JSON state."""
        return {}, {}

    def load_extra_checkpoint(self, files: dict, state: dict) -> None:
        """Restore what :meth:`extra_checkpoint` saved."""

    def ema_model(self) -> ACDiT:
        model = ACDiT(self.run.model)
        model.load_state_dict({n: ckpt.full_tensor(t).cpu() for n, t in self.ema.items()})
        return model.eval()

    @property
    def model_dir(self) -> Path:
        """Where the finished run's model goes (``<out>/model``)."""
        return self.out / "model"

    def export(self) -> Path | None:
        """``<out>/model``: config.json + model.safetensors with the EMA weights."""
        model = self.ema_model()  # collective under FSDP: every rank gathers
        if not self.is_main:
            return None
        return self._write_model(model)

    def ensure_exported(self) -> bool:
        """Export the finished run's model unless ``<out>/model`` already holds it; True when it wrote it.

        For a run killed between its last checkpoint and the export (resumed with ``resume=True``):
        ``<out>/model`` counts as written only when config.json reads back as this run's
        architecture and model.safetensors as this step's EMA weights, bit for bit; a missing,
        truncated or stale one (from before the run was extended) is written again as ``fit()``
        would have written it. Every process must call it; only the main one writes.
        """
        if self.step < self.cfg.steps:
            raise ValueError(f"the run in {self.out} is at step {self.step} of train.steps={self.cfg.steps}: it has "
                             f"no final model yet; train on with --resume (or `ardiff export {self.out} OUT` for "
                             f"the weights of its newest checkpoint)")
        model = self.ema_model()  # collective under FSDP: every rank gathers
        written = False
        if self.is_main and not self._exported(model):
            self._write_model(model)
            written = True
        if self.world > 1:  # every rank returns the main rank's answer (and waits for its write)
            answer = [written]
            dist.broadcast_object_list(answer, src=0)
            written = answer[0]
        return written

    def _exported(self, model: ACDiT) -> bool:
        """Whether ``<out>/model`` reads back as ``model``: its architecture and exactly its weights."""
        from safetensors.torch import load_file

        from ardiff.models.checkpoint import WEIGHTS_NAME, load_config

        try:
            config = load_config(self.model_dir)
            weights = load_file(str(self.model_dir / WEIGHTS_NAME))
        except Exception:  # missing, truncated, not JSON, not safetensors (which raises its own error types)
            return False
        expected = model.state_dict()
        return (config == self.run.model and weights.keys() == expected.keys()
                and all(weights[k].dtype == v.dtype and torch.equal(weights[k], v) for k, v in expected.items()))

    def _write_model(self, model: ACDiT) -> Path:
        """Write ``model`` beside ``<out>/model`` and rename it into place: a kill midway leaves the old
        directory or none, never new weights under an old config.json."""
        from ardiff.models.checkpoint import save_pretrained

        for leftover in [*self.out.glob(".model.tmp-*"), *self.out.glob(".model.old-*")]:  # from killed writes
            shutil.rmtree(leftover, ignore_errors=True)
        extra = self.model_record()
        if self.vae:
            extra["_vae"] = self.vae.to_dict()
        tmp = self.out / f".model.tmp-{os.getpid()}"
        save_pretrained(model, tmp, extra_config=extra)
        replace_directory(tmp, self.model_dir)
        return self.model_dir

    def model_record(self) -> dict:
        """What the exported model records beside its weights (see :func:`model_record`)."""
        return model_record(self.run)

    def sample_grid(self) -> Path | None:
        if not self.is_main or self.run.sample.num_images <= 0:
            return None
        from ardiff.generate.pipeline import Pipeline, class_balanced_labels
        from ardiff.utils.media import save_media

        model = self.ema_model().to(self.device)
        n = self.run.sample.num_images
        cond = class_balanced_labels(n, self.run.model.num_classes)
        settings = self.run.sample.settings()
        if cond is None:
            settings = settings.but(cfg_scale=1.0)
        if self.vae is not None and self._vae is None:
            self._vae = self.vae.load(self.device)
        pipe = Pipeline(model, settings, vae=self._vae, vae_record=self.vae)
        out = pipe(cond, seeds=range(n))
        path = self.out / "samples" / f"step_{self.step:08d}{'.gif' if out.dim() == 5 else '.png'}"
        path = save_media(out.cpu(), path)
        if self.tb is not None and out.dim() == 4:
            from ardiff.utils.media import image_grid

            self.tb.add_image("samples", torch.from_numpy(image_grid(out.cpu())).permute(2, 0, 1), self.step)
        return path

    def _tensorboard_scalars(self, scalars: dict):
        if not self.cfg.tensorboard:
            return
        if self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.cfg.tensorboard = False
                print("tensorboard is not installed: scalars go to metrics.jsonl only")
                return
            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        for k, v in scalars.items():
            if k != "step":
                self.tb.add_scalar(f"train/{k}", v, scalars["step"])
