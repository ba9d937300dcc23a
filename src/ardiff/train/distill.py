"""Few-step distillation: a student that samples a block in 1-4 steps without guidance.

Method (ODE-trajectory regression, CausVid's initialisation with an autoregressive teacher
as in Causal Forcing): the teacher's deterministic ODE solver, with its classifier-free
guidance, draws whole samples block by block; every block's trajectory is recorded at the
student's timesteps (999, 749, 499, 249 by default) together with where it ends. The
student, started from the teacher's weights and predicting ``v`` (well conditioned at high
noise, where an epsilon output would need dividing by sqrt(alpha) ~ 0.006), learns to jump
from each recorded state straight to the trajectory's end: an MSE on the predicted clean
block. Its context is the teacher's finished blocks, in the SCAM training forward (clean
copies), which computes exactly the keys and values the KV cache holds at sampling time.

The trajectories are a pure function of (teacher, settings, seed): they are written once
per run, in files of ``trajectory_batch``, and a resumed run reuses the files it finds, so
an interrupted run loses at most one file's work and resumes bit for bit.

Sampling: :class:`~ardiff.SamplingSettings` ``sampler="consistency"`` at the recorded
``timesteps`` (diffusers' LCM scheduler: predict the clean block, re-noise it with fresh
noise to the next timestep).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ardiff.diffusion.schedule import NoiseSchedule
from ardiff.generate.settings import SamplingSettings
from ardiff.models.acdit import ACDiT
from ardiff.train.config import RunConfig, distill_teacher, teacher_ode_settings
from ardiff.train.trainer import Trainer
from ardiff.utils.seeding import hashed_seed, make_generators

__all__ = ["DistillationLoss", "Distiller", "TrajectoryBank", "distillation_record", "predicted_clean"]

TRAJECTORY_STREAM = 3_000_017  # seeds of the teacher's trajectories: hashed_seed(seed, stream, i)


def distillation_record(run: RunConfig) -> dict:
    """``_distillation`` in the student's config.json: what it was distilled from and how."""
    d = run.distill
    directory, teacher, _ = distill_teacher(d.teacher)
    ode = teacher_ode_settings(d, teacher, SamplingSettings.recorded(directory))
    record = {"method": d.method, "teacher": d.teacher, "teacher_cfg_scale": ode.cfg_scale,
              "teacher_sampling": ode.to_dict(), "timesteps": list(d.timesteps),
              "num_trajectories": d.num_trajectories, "seed": run.train.seed}
    if d.method == "dmd":
        record.update({"init_student": d.init_student, "real_score": d.real_score or d.teacher,
                       "real_cfg": d.real_cfg, "critic_updates": d.critic_updates,
                       "regression_weight": d.regression_weight, "steps": run.train.steps})
    return record


# ---------------------------------------------------------------------------
#                     The teacher's trajectories
# ---------------------------------------------------------------------------
class TrajectoryBank(torch.utils.data.Dataset):
    """The teacher's samples (input layout, for the trainer's batches), their labels, and each
    block's state at the student's timesteps, ``states`` (M, N, K, S, P)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, states: torch.Tensor):
        self.images, self.labels, self.states = images, labels, states

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def class_labels(self):
        return self.labels.tolist()

    @classmethod
    def build(cls, teacher: ACDiT, settings: SamplingSettings, timesteps, num: int, seed: int, batch: int,
              directory: Path, progress: bool = False) -> "TrajectoryBank":
        """Draw (or read back) ``num`` trajectories in files of ``batch`` under ``directory``."""
        from safetensors.torch import load_file

        from ardiff.utils.io import atomic_save_safetensors, atomic_write_bytes

        # File k holds trajectories k*batch.. whatever the total: a run given more (or fewer)
        # trajectories keeps the files it has. Anything else changed makes them another run's.
        manifest = {"settings": settings.to_dict(), "timesteps": list(timesteps), "seed": seed, "batch": batch,
                    "teacher_config": teacher.config.to_dict(), "teacher_weights": _weights_digest(teacher)}
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "manifest.json"
        if path.is_file() and json.loads(path.read_text()) != manifest:
            raise ValueError(f"{directory} holds trajectories drawn with another teacher or other settings than this "
                             f"run's; move it away (the run draws them again) or use another --out-dir")
        atomic_write_bytes(path, json.dumps(manifest, indent=2).encode())
        starts = range(0, num, batch)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="teacher trajectories", unit="file")
        parts = []
        for start in starts:
            indices = range(start, min(start + batch, num))
            file = directory / f"trajectories_{start:07d}.safetensors"
            part = load_file(str(file)) if file.is_file() else None
            if part is None or part["labels"].shape[0] < len(indices):  # missing, or cut short by a smaller total
                part = draw_trajectories(teacher, settings, timesteps, indices, seed)
                atomic_save_safetensors({k: v.contiguous() for k, v in part.items()}, file)
            parts.append({k: v[: len(indices)] for k, v in part.items()})
        joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return cls(joined["images"], joined["labels"], joined["states"])


def _weights_digest(model: ACDiT) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def draw_trajectories(teacher: ACDiT, settings: SamplingSettings, timesteps, indices: range, seed: int) -> dict:
    """Trajectories ``indices``: labels ``i % num_classes``, seeds ``hashed_seed(seed, stream, i)``."""
    from ardiff.generate.context import blocks_to_input
    from ardiff.generate.pipeline import class_balanced_labels
    from ardiff.generate.sampler import sample

    c = teacher.config
    B, positions = len(indices), {int(t): k for k, t in enumerate(timesteps)}
    labels = class_balanced_labels(indices.stop, c.num_classes)
    labels = None if labels is None else labels[indices.start:]
    states = torch.empty(B, c.num_blocks, len(timesteps), c.block_size, c.patch_dim)

    def capture(event):
        if event.timestep in positions:
            states[:, event.index, positions[event.timestep]] = event.x.float().cpu()

    gens = make_generators([hashed_seed(seed, TRAJECTORY_STREAM, i) for i in indices])
    blocks = sample(teacher, labels, settings, generator=gens, batch_size=B, output="blocks", on_step=capture)
    images = blocks_to_input(teacher, blocks).float().cpu()
    return {"images": images, "labels": (torch.zeros(B, dtype=torch.long) if labels is None else labels),
            "states": states}


# ---------------------------------------------------------------------------
#                     The objective and the run
# ---------------------------------------------------------------------------
def predicted_clean(prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str):
    """The clean sample a model's output implies at noise level ``alpha_bar`` (broadcastable)."""
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * prediction
    if prediction_type == "epsilon":
        return (x_t - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
    raise ValueError(f"prediction_type={prediction_type!r}; expected epsilon or v_prediction")


class DistillationLoss(torch.nn.Module):
    """MSE between the student's predicted clean blocks, from trajectory states, and the
    trajectories' ends; one module, so DDP/FSDP wrappers see one ``forward``."""

    def __init__(self, model: ACDiT):
        super().__init__()
        self.model = model
        self.schedule = NoiseSchedule.from_config(model.config)

    def forward(self, x_t_blocks, t, cond, x0):
        """x_t_blocks: (B, N, S, P) states; t: (B, N) their timesteps; x0: (B, C, ...) the ends."""
        model = self.model
        out = model.to_blocks(model(model.from_blocks(x_t_blocks), t, cond, x0)).float()
        ab = self.schedule.alphas_cumprod.to(out.device)[t].float()[..., None, None]
        clean = predicted_clean(out, x_t_blocks.float(), ab, model.config.prediction_type)
        return (clean - model.to_blocks(x0).float()).square().mean()


class Distiller(Trainer):
    """A :class:`Trainer` whose data are the teacher's trajectories and whose loss is
    :class:`DistillationLoss`: resume, checkpoints, EMA, logging and export are the trainer's."""

    def build_dataset(self):
        from ardiff.models.resolve import resolve_model_dir

        d = self.run.distill
        directory = resolve_model_dir(d.teacher)
        teacher = ACDiT.from_pretrained(directory, device=self.device).eval()
        settings = teacher_ode_settings(d, teacher.config, SamplingSettings.recorded(directory))
        if self.is_main:
            print(f"teacher {d.teacher}: {settings.describe()}; {d.num_trajectories} trajectories")
        bank_dir = self.out / "trajectories"
        if self.world > 1:  # the main process draws, the others read the files
            import torch.distributed as dist

            if self.is_main:
                TrajectoryBank.build(teacher, settings, d.timesteps, d.num_trajectories, self.cfg.seed,
                                     d.trajectory_batch, bank_dir, self.progress)
            dist.barrier()
        bank = TrajectoryBank.build(teacher, settings, d.timesteps, d.num_trajectories, self.cfg.seed,
                                    d.trajectory_batch, bank_dir, self.progress)
        self.timesteps = torch.tensor(d.timesteps, device=self.device)
        return bank

    def build_objective(self):
        return DistillationLoss(self.model)

    def model_record(self) -> dict:
        return {**super().model_record(), "_distillation": distillation_record(self.run)}

    def draw_step_randomness(self, generator):
        """Which recorded timestep each (sample, block) trains at this step, (B, N)."""
        k = torch.randint(0, len(self.run.distill.timesteps), (self.cfg.batch_size, self.run.model.num_blocks),
                          generator=generator)
        return (k.to(self.device),)

    def micro_loss(self, indices, step, first, randomness):
        (k,) = randomness
        x0, y = self.batch(indices, step, first)
        states = self.dataset.states[indices].to(self.device)  # (b, N, K, S, P)
        x_t = states.gather(2, k[:, :, None, None, None].expand(-1, -1, 1, *states.shape[3:]))[:, :, 0]
        return self.objective(x_t, self.timesteps[k], self._condition(y), x0)
