"""Trainer: exact resume, atomic checkpoints, DDP equivalence, real-data learning, errors."""

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from ardiff import ACDiT
from ardiff.train import Trainer, load_run_config
from ardiff.train import checkpoint as ckpt
from ardiff.train.config import build_run_config
from ardiff.train.trainer import NonFiniteLossError
from helpers import HAVE_FMNIST, needs_fmnist

TINY_MODEL = dict(input_size=[28, 28], in_channels=1, patch_size=7, block_layout="tiles", block_size=4,
                  depth=2, hidden_size=64, num_heads=2, num_classes=10)


def synthetic_dataset(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g))


def run_config(tmp_path, **train):
    raw = {"model": dict(TINY_MODEL), "train": {"out_dir": str(tmp_path), "steps": 6, "batch_size": 8,
                                                "checkpoint_every": 3, "log_every": 1, "lr": 1e-3,
                                                "ema_decay": 0.9, "tensorboard": False, **train},
           "sample": {"num_images": 0}}
    return build_run_config(raw)


def final_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, \
           {n: t.clone() for n, t in trainer.ema.items()}


def test_resume_is_bit_identical(tmp_path):
    data = synthetic_dataset()
    full = Trainer(run_config(tmp_path / "a", warmup_steps=2, grad_clip=0.5), dataset=data, progress=False)
    full.fit()
    interrupted = Trainer(run_config(tmp_path / "b", warmup_steps=2, grad_clip=0.5), dataset=data, progress=False)
    interrupted.fit(max_steps=4)  # "killed" after step 4; last checkpoint at step 3
    resumed = Trainer(run_config(tmp_path / "b", warmup_steps=2, grad_clip=0.5), dataset=data, resume=True,
                      progress=False)
    assert resumed.step == 3
    resumed.fit()
    (wa, ea), (wb, eb) = final_weights(full), final_weights(resumed)
    for n in wa:
        assert torch.equal(wa[n], wb[n]), n
        assert torch.equal(ea[n], eb[n]), n
    # the exported model is the EMA weights, loadable with from_pretrained
    model = ACDiT.from_pretrained(tmp_path / "b" / "model")
    assert torch.equal(model.state_dict()["x_embedder.weight"], eb["x_embedder.weight"])


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    trainer = Trainer(run_config(tmp_path), dataset=synthetic_dataset(), progress=False)
    trainer.fit(max_steps=3)
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_00000003"

    real_save = ckpt.atomic_save_safetensors
    calls = {"n": 0}

    def dying_save(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # killed while writing the second file of the step-6 checkpoint
            Path(path).with_name("partial").write_bytes(b"\x00" * 10)
            raise KeyboardInterrupt
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "atomic_save_safetensors", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.setattr(ckpt, "atomic_save_safetensors", real_save)
    latest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step_00000003"
    resumed = Trainer(run_config(tmp_path), dataset=synthetic_dataset(), resume=True, progress=False)
    assert resumed.step == 3


def _killed_at_export(self):
    raise KeyboardInterrupt  # the process dies after the last checkpoint, before the model is written


def read_model(directory: Path):
    return (json.loads((directory / "config.json").read_text()),
            load_file(str(directory / "model.safetensors")), (directory / "model.safetensors").read_bytes())


@pytest.fixture(scope="module")
def uninterrupted_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    Trainer(run_config(out), dataset=synthetic_dataset(), progress=False).fit()
    return out / "model"


@pytest.mark.parametrize("damage", ["killed_before_export", "deleted", "truncated_weights", "no_config"])
def test_ensure_exported_writes_the_model_the_finished_run_lacks(tmp_path, monkeypatch, uninterrupted_model, damage):
    trainer = Trainer(run_config(tmp_path), dataset=synthetic_dataset(), progress=False)
    model_dir = tmp_path / "model"
    if damage == "killed_before_export":
        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "export", _killed_at_export)
            with pytest.raises(KeyboardInterrupt):
                trainer.fit()
        assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_00000006"
        assert not model_dir.exists()
    else:
        trainer.fit()
        if damage == "deleted":
            shutil.rmtree(model_dir)
        elif damage == "truncated_weights":
            weights = (model_dir / "model.safetensors").read_bytes()
            (model_dir / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        else:
            (model_dir / "config.json").unlink()
    resumed = Trainer(run_config(tmp_path), dataset=synthetic_dataset(), resume=True, progress=False)
    assert resumed.step == 6 and resumed.model_dir == model_dir
    assert resumed.ensure_exported() is True
    config, weights, _ = read_model(model_dir)
    want_config, want_weights, _ = read_model(uninterrupted_model)
    assert config == want_config  # architecture and the recorded _sampling / _data
    # the uninterrupted run's weights, bit for bit (the files' bytes differ: safetensors orders its metadata freely)
    assert weights.keys() == want_weights.keys()
    assert all(weights[k].dtype == want_weights[k].dtype and torch.equal(weights[k], want_weights[k]) for k in weights)
    ACDiT.from_pretrained(model_dir)
    # now nothing is missing: a second call writes nothing
    written_at = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert resumed.ensure_exported() is False
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == written_at
    assert not list(tmp_path.glob(".model.*"))


def test_export_replaces_the_model_whole_and_a_stale_one_is_written_again(tmp_path, monkeypatch):
    import ardiff.models.checkpoint as model_files

    Trainer(run_config(tmp_path, steps=3), dataset=synthetic_dataset(), progress=False).fit()
    model_dir = tmp_path / "model"
    _, old_weights, old_raw = read_model(model_dir)
    extended = Trainer(run_config(tmp_path, steps=6), dataset=synthetic_dataset(), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"at step 3 of train.steps=6: it has no final model yet; train on with "
                                         r"--resume"):
        extended.ensure_exported()

    def killed_at_config(path, data):
        raise KeyboardInterrupt  # dies after model.safetensors of the new export, before its config.json

    with monkeypatch.context() as patch:
        patch.setattr(model_files, "atomic_write_bytes", killed_at_config)
        with pytest.raises(KeyboardInterrupt):
            extended.fit()
    # the step-3 model is still there whole (not step-6 weights under a step-3 config.json)
    assert read_model(model_dir)[2] == old_raw
    resumed = Trainer(run_config(tmp_path, steps=6), dataset=synthetic_dataset(), resume=True, progress=False)
    assert resumed.step == 6
    assert resumed.ensure_exported() is True  # the step-3 model is stale: the run now ends at step 6
    _, weights, _ = read_model(model_dir)
    final_ema = load_file(str(tmp_path / "checkpoints" / "step_00000006" / "ema.safetensors"))
    assert all(torch.equal(weights[k], final_ema[k]) for k in final_ema) and weights.keys() == final_ema.keys()
    assert not all(torch.equal(weights[k], old_weights[k]) for k in old_weights)
    assert not list(tmp_path.glob(".model.*"))  # the killed write's temporary directory is gone
    assert resumed.ensure_exported() is False


def test_non_finite_loss_stops_with_clear_error(tmp_path):
    data = synthetic_dataset()
    data.tensors[0][3] = float("nan")
    trainer = Trainer(run_config(tmp_path, steps=20), dataset=data, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step \d+.*Last good checkpoint"):
        trainer.fit()


def test_flex_backend_on_cpu_is_refused_before_training(tmp_path):
    raw = run_config(tmp_path).to_dict()
    raw["model"]["attention_backend"] = "flex"
    with pytest.raises(ValueError, match="model.attention_backend=flex trains only on CUDA.*auto or sdpa"):
        Trainer(build_run_config(raw), dataset=synthetic_dataset(), device="cpu", progress=False)


def test_wsd_schedule():
    from ardiff.train.trainer import wsd_lr_factor

    f = [wsd_lr_factor(s, 100, 10, 0.15) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0 and f[84] == 1.0
    assert f[85] == 1.0 and f[99] == pytest.approx(1 / 15) and all(a >= b for a, b in zip(f[85:], f[86:]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(run_config(Path(out_dir), steps=4, checkpoint_every=100), dataset=synthetic_dataset(),
                      progress=False)
    trainer.fit()
    torch.save({n: p.detach() for n, p in trainer.model.named_parameters()}, Path(result_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    single = Trainer(run_config(tmp_path / "single", steps=4, checkpoint_every=100), dataset=synthetic_dataset(),
                     progress=False)
    single.fit()
    for n, p in single.model.named_parameters():
        assert torch.equal(r0[n], r1[n]), n  # ranks identical
        assert torch.allclose(r0[n], p.detach(), atol=1e-5, rtol=1e-4), n  # = one process, same global batch


def test_grad_accum_matches_full_batch(tmp_path):
    a = Trainer(run_config(tmp_path / "a", steps=3), dataset=synthetic_dataset(), progress=False)
    a.fit()
    b = Trainer(run_config(tmp_path / "b", steps=3, grad_accum=4), dataset=synthetic_dataset(), progress=False)
    b.fit()
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), n


@needs_fmnist
def test_fmnist_loss_goes_down_on_real_data(tmp_path):
    run = load_run_config("fmnist", [f"train.out_dir={tmp_path}", "train.steps=80", "train.batch_size=32",
                                     "train.log_every=1", "train.warmup_steps=10", "train.checkpoint_every=1000",
                                     "train.tensorboard=false", "model.depth=2", "model.hidden_size=96",
                                     "model.num_heads=2", "sample.num_images=4", "sample.num_steps=3"])
    trainer = Trainer(run, progress=False)
    trainer.fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "samples" / "step_00000080.png").is_file()


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) train.lrr; valid keys in 'train'"):
        load_run_config("fmnist", ["train.lrr=1"])
    with pytest.raises(ValueError, match=r"train.lr must be a number, got 'fast'"):
        load_run_config("fmnist", ["train.lr=fast"])
    assert load_run_config("fmnist", ["train.lr=3e-4"]).train.lr == 3e-4  # YAML 1.1 reads this as a string
    with pytest.raises(ValueError, match=r"unknown section"):
        load_run_config("fmnist", ["optim.lr=1"])
    with pytest.raises(ValueError, match=r"must look like section.key=value"):
        load_run_config("fmnist", ["train.lr"])
    with pytest.raises(ValueError, match=r"invalid ACDiTConfig: block_size=50"):
        load_run_config("fmnist", ["model.block_layout=raster", "model.block_size=50"])
    with pytest.raises(ValueError, match=r"sample.clip_denoised clips to the pixel range.*data.vae"):
        load_run_config("fmnist", ["sample.clip_denoised=true", "data.vae=/some/vae"])
    with pytest.raises(ValueError, match=r"sample.clip_denoised clips to the pixel range.*data.name='latents'"):
        load_run_config("fmnist", ["data.name=latents"])  # fmnist records clipping: latents must turn it off
    assert load_run_config("fmnist", ["sample.clip_denoised=true"]).sample.clip_denoised
    with pytest.raises(FileNotFoundError, match="run config nope.yaml not found"):
        load_run_config("nope.yaml")
    with pytest.raises(ValueError, match="not divisible by processes"):
        Trainer(run_config(tmp_path, batch_size=6, grad_accum=4), dataset=synthetic_dataset(), progress=False)
    bad = TensorDataset(torch.zeros(4, 3, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError,
                       match=r"dataset samples have shape \(3, 28, 28\) but the model expects \(1, 28, 28\)"):
        Trainer(run_config(tmp_path), dataset=bad, progress=False)


def test_all_shipped_configs_parse():
    for path in sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml")):
        run = load_run_config(path)
        assert run.model.num_blocks >= 1, path


def test_activation_checkpointing_same_gradients():
    from ardiff import training_loss
    from helpers import tiny_model

    grads = []
    for ckpt_on in (False, True):
        model = tiny_model(dtype=torch.float64).train()
        model.gradient_checkpointing = ckpt_on
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        loss = training_loss(model, x, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(1))
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12)


def _fsdp_worker(rank, world, port, out_dir, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(run_config(Path(out_dir), steps=4, checkpoint_every=2, distributed="fsdp"),
                      dataset=synthetic_dataset(), progress=False)
    trainer.fit()
    state = {n: ckpt.full_tensor(p.detach()) for n, p in trainer.model.named_parameters()}
    if rank == 0:
        torch.save(state, Path(result_dir) / "fsdp.pt")
        model_dir = Path(out_dir) / "model"
        torch.save(load_file(str(model_dir / "model.safetensors")), Path(result_dir) / "fit_export.pt")
        shutil.rmtree(model_dir)  # as a kill before the export leaves it
    torch.distributed.barrier()
    answers = [trainer.ensure_exported(), trainer.ensure_exported()]  # every rank calls: the EMA gather is collective
    (Path(result_dir) / f"ensure_exported{rank}.json").write_text(json.dumps(answers))
    # Both ranks reach here before either tears down gloo: a rank that destroys the group while
    # the other still has collectives in flight aborts ("terminate called without an active exception").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_fsdp_two_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(2, _free_port(), str(tmp_path / "fsdp"), str(tmp_path)), nprocs=2, join=True)
    sharded = torch.load(tmp_path / "fsdp.pt")
    single = Trainer(run_config(tmp_path / "single", steps=4, checkpoint_every=100), dataset=synthetic_dataset(),
                     progress=False)
    single.fit()
    for n, p in single.model.named_parameters():
        assert torch.allclose(sharded[n], p.detach(), atol=1e-5, rtol=1e-4), n
    # its checkpoints hold full tensors, loadable by a single process
    resumed = Trainer(run_config(tmp_path / "fsdp", steps=4), dataset=synthetic_dataset(), resume=True,
                      progress=False)
    assert resumed.step == 4
    # the deleted model was written again by the main rank, the same weights; both ranks got its answer
    assert [json.loads((tmp_path / f"ensure_exported{r}.json").read_text()) for r in (0, 1)] == [[True, False]] * 2
    fit_export = torch.load(tmp_path / "fit_export.pt")
    again = load_file(str(tmp_path / "fsdp" / "model" / "model.safetensors"))
    assert fit_export.keys() == again.keys() and all(torch.equal(fit_export[k], again[k]) for k in again)


@pytest.mark.slow
def test_compiled_layers_train(tmp_path):
    a = Trainer(run_config(tmp_path / "a", steps=2), dataset=synthetic_dataset(), progress=False)
    a.fit()
    b = Trainer(run_config(tmp_path / "b", steps=2, compile=True), dataset=synthetic_dataset(), progress=False)
    b.fit()
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-4, rtol=1e-3), n


def test_tensorboard_scalars_and_sample_grid(tmp_path):
    run = run_config(tmp_path, steps=2, checkpoint_every=100, tensorboard=True)
    run.sample.num_images = 4
    run.sample.num_steps = 2
    trainer = Trainer(run, dataset=synthetic_dataset(), progress=False)
    trainer.fit()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "samples" in acc.Tags()["images"]
    assert (tmp_path / "samples" / "step_00000002.png").is_file()


def test_ema_warmup(tmp_path):
    trainer = Trainer(run_config(tmp_path, ema_decay=0.999, ema_warmup_steps=10), dataset=synthetic_dataset(),
                      progress=False)
    assert trainer.ema_decay(0) == pytest.approx(0.1)
    assert trainer.ema_decay(90) == pytest.approx(0.91)
    assert trainer.ema_decay(10**6) == 0.999
    constant = Trainer(run_config(tmp_path / "c", ema_decay=0.9), dataset=synthetic_dataset(), progress=False)
    assert constant.ema_decay(0) == 0.9


class LabelledDataset(TensorDataset):
    """A synthetic dataset that knows each example's class, as FashionMNIST does."""

    def class_labels(self):
        return self.tensors[1]


def test_class_weights_draw_classes_in_proportion_and_resume_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    data = LabelledDataset(torch.rand(200, 1, 28, 28, generator=g) * 2 - 1, labels)
    weights = [0, 1, 1, 1, 1, 1, 1, 1, 1, 3]
    trainer = Trainer(run_config(tmp_path / "a", batch_size=64, class_weights=weights), dataset=data, progress=False)
    drawn = labels[torch.cat([trainer.global_indices(s) for s in range(200)])]
    counts = torch.bincount(drawn, minlength=10).double() / len(drawn)
    assert counts[0] == 0  # weight 0: never drawn
    assert abs(counts[9].item() - 3 / 11) < 0.01 and abs(counts[1].item() - 1 / 11) < 0.01
    assert torch.equal(trainer.global_indices(7), trainer.global_indices(7))  # a pure function of the step
    # Exact resume holds with weighted sampling too.
    full = Trainer(run_config(tmp_path / "b", class_weights=weights), dataset=data, progress=False)
    full.fit()
    interrupted = Trainer(run_config(tmp_path / "c", class_weights=weights), dataset=data, progress=False)
    interrupted.fit(max_steps=4)
    resumed = Trainer(run_config(tmp_path / "c", class_weights=weights), dataset=data, resume=True, progress=False)
    resumed.fit()
    for (a, b) in zip(final_weights(full), final_weights(resumed)):
        for n in a:
            assert torch.equal(a[n], b[n]), n


def test_class_weights_errors(tmp_path):
    with pytest.raises(ValueError, match=r"train.class_weights has 2 entries but model.num_classes=10"):
        run_config(tmp_path, class_weights=[1, 2])
    with pytest.raises(ValueError, match=r"must be >= 0 with a positive sum"):
        run_config(tmp_path, class_weights=[1] * 9 + [-1])
    with pytest.raises(ValueError, match=r"needs a dataset that knows each example's class.*TensorDataset"):
        Trainer(run_config(tmp_path, class_weights=[1] * 10), dataset=synthetic_dataset(), progress=False)
    only_zeros = LabelledDataset(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"gives every example of this dataset weight 0"):
        Trainer(run_config(tmp_path, class_weights=[0] + [1] * 9), dataset=only_zeros, progress=False)


def test_moving_fmnist_class_labels_match_items():
    from ardiff.data import MovingFashionMNIST

    if not HAVE_FMNIST:
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    data = MovingFashionMNIST("test", num_frames=2, canvas_size=32, num_videos=50)
    assert torch.equal(data.class_labels(), torch.stack([torch.as_tensor(data[i][1]) for i in range(50)]))


def test_block_loss_weights_weigh_each_blocks_mse(tmp_path):
    from ardiff.diffusion.schedule import draw_training_randomness, training_loss

    torch.manual_seed(0)
    model = ACDiT(run_config(tmp_path).model).eval()
    x, y = synthetic_dataset(4)[:]
    t, noise, drop = draw_training_randomness(model.config, 4, torch.Generator().manual_seed(1))
    per_block = torch.stack([training_loss(model, x, y, t=t, noise=noise, drop=drop, block_weights=w)
                             for w in torch.eye(4).tolist()])  # one-hot weights: that block's MSE alone
    plain = training_loss(model, x, y, t=t, noise=noise, drop=drop)
    assert torch.equal(training_loss(model, x, y, t=t, noise=noise, drop=drop, block_weights=[1, 1, 1, 1]), plain)
    torch.testing.assert_close(per_block.mean(), plain)
    weighted = training_loss(model, x, y, t=t, noise=noise, drop=drop, block_weights=[2, 1, 1, 1])
    torch.testing.assert_close(weighted, (2 * per_block[0] + per_block[1:].sum()) / 5)
    assert not torch.allclose(weighted, plain)
    trainer = Trainer(run_config(tmp_path, block_loss_weights=[3, 1, 1, 1]), dataset=synthetic_dataset(),
                      progress=False)
    assert torch.equal(trainer.objective.block_weights, torch.tensor([2.0, 2 / 3, 2 / 3, 2 / 3]))
    with pytest.raises(ValueError, match=r"train.block_loss_weights has 2 entries but the model has 4 blocks"):
        run_config(tmp_path, block_loss_weights=[1, 2])
    with pytest.raises(ValueError, match=r"train.block_loss_weights=.* must be >= 0 with a positive sum"):
        run_config(tmp_path, block_loss_weights=[0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"must be 4 numbers >= 0"):
        training_loss(model, x, y, t=t, noise=noise, drop=drop, block_weights=[1, 1])


def test_p2_timestep_weighting_moves_loss_to_the_high_noise_steps(tmp_path):
    from ardiff.diffusion.schedule import NoiseSchedule, draw_training_randomness, timestep_loss_weights, training_loss

    torch.manual_seed(0)
    model = ACDiT(run_config(tmp_path).model).eval()
    ab = NoiseSchedule.from_config(model.config).alphas_cumprod
    assert timestep_loss_weights(ab, "uniform") is None
    w = timestep_loss_weights(ab, "p2")
    snr = ab / (1 - ab)
    torch.testing.assert_close(w.double(), (1 / (1 + snr)) / (1 / (1 + snr)).mean(), rtol=1e-6, atol=0)
    assert w.mean().item() == pytest.approx(1.0) and w[900] > 1 > w[100] and torch.all(w[1:] >= w[:-1])
    # The loss is the mean of each (sample, block) MSE times its timestep's weight.
    x, y = synthetic_dataset(4)[:]
    t, noise, drop = draw_training_randomness(model.config, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = model(model.from_blocks(NoiseSchedule.from_config(model.config).add_noise(model.to_blocks(x), noise, t)),
                     t, y, x, drop_cond=drop)
    per_item = (model.to_blocks(pred) - noise).square().mean(dim=(2, 3))
    with torch.no_grad():
        weighted = training_loss(model, x, y, t=t, noise=noise, drop=drop, timestep_weighting="p2")
    torch.testing.assert_close(weighted, (per_item * w[t]).mean())
    with pytest.raises(ValueError, match=r"train.timestep_weighting='snr'; choose one of uniform, p2"):
        run_config(tmp_path, timestep_weighting="snr")
    with pytest.raises(ValueError, match=r"train.p2_k=0.0 must be > 0"):
        run_config(tmp_path, timestep_weighting="p2", p2_k=0.0)
