"""Sample files (ADM/DiT .npz): the round trip, latent decoding, sharding over torchrun ranks
(gloo) and resuming a half-written job."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ardiff
from ardiff import ACDiT, ACDiTConfig, SamplingSettings, make_generators, sample
from ardiff.data.latents import VAERecord
from ardiff.eval import sample_files as sf
from ardiff.models.checkpoint import save_pretrained
from helpers import randomize

STEPS = ["--steps", "2"]


def _model_dir(path, **overrides):
    torch.manual_seed(0)
    config = ACDiTConfig.preset("tiny", num_classes=3, **overrides)
    return save_pretrained(randomize(ACDiT(config), std=0.05).eval(), path,
                           extra_config={"_sampling": {"cfg_scale": 1.5, "num_steps": 2, "sampler": "ddim"}})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _model_dir(tmp_path_factory.mktemp("m") / "model")


def test_uint8_round_trip_and_file(tmp_path):
    x = torch.rand(5, 3, 6, 7) * 2 - 1
    arr = sf.to_uint8(x)
    assert arr.shape == (5, 6, 7, 3) and arr.dtype == np.uint8
    assert (sf.from_uint8(arr) - x).abs().max() <= 1 / 127.5 + 1e-6  # one grey level
    assert np.array_equal(sf.to_uint8(sf.from_uint8(arr)), arr)  # uint8 -> float -> uint8 is exact
    clips = torch.rand(2, 1, 3, 4, 4) * 2 - 1
    assert sf.to_uint8(clips).shape == (2, 3, 4, 4, 1)
    assert sf.to_uint8(clips, rgb=True).shape == (2, 3, 4, 4, 3)
    path = sf.save_sample_npz(tmp_path / "s.npz", arr, np.arange(5), job={"a": 1})
    back = sf.load_sample_npz(path)
    assert np.array_equal(back.images, arr) and back.labels.tolist() == list(range(5)) and back.job == {"a": 1}
    with np.load(path) as raw:  # what ADM's evaluator reads
        assert raw["arr_0"].dtype == np.uint8 and raw["arr_1"].dtype == np.int64
    with pytest.raises(ValueError, match="arr_0 is float32"):
        sf.save_sample_npz(tmp_path / "f.npz", np.zeros((2, 4, 4, 3), np.float32))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        sf.load_sample_npz(tmp_path / "junk.npz")


def test_file_matches_direct_sampling(model_dir, tmp_path):
    """Labels i % K, seeds seed + i, the recorded settings, independent of the batch size."""
    out = tmp_path / "s.npz"
    summary = sf.sample_model_to_npz(model_dir, out, 5, seed=3, batch_size=2, progress=False)
    assert summary["chunks_drawn"] == 3 and not sf.parts_dir(out).exists()
    file = sf.load_sample_npz(out)
    assert file.labels.tolist() == [0, 1, 2, 0, 1]
    assert file.job["num_steps"] == 2 and file.job["sampler"] == "ddim" and file.job["seed"] == 3
    model = ACDiT.from_pretrained(model_dir)
    direct = sample(model, torch.tensor([0, 1]), SamplingSettings(num_steps=2, cfg_scale=1.5, sampler="ddim"),
                    generator=make_generators([3, 4]))
    assert np.array_equal(file.images[:2], sf.to_uint8(direct))
    other = sf.sample_model_to_npz(model_dir, tmp_path / "b5.npz", 5, seed=3, batch_size=5, progress=False)
    diff = np.abs(sf.load_sample_npz(other["out"]).images.astype(int) - file.images.astype(int))
    assert diff.max() <= 1  # per-sample seeds: other batching changes at most float round-off


def test_resume_completes_a_half_written_job(model_dir, tmp_path, monkeypatch):
    fresh = sf.sample_model_to_npz(model_dir, tmp_path / "fresh.npz", 6, batch_size=2, progress=False)
    out = tmp_path / "s.npz"
    real = sf.save_sample_npz
    calls = []

    def dies_on_second_chunk(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed while drawing chunk 2
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sf, "save_sample_npz", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        sf.sample_model_to_npz(model_dir, out, 6, batch_size=2, progress=False)
    monkeypatch.setattr(sf, "save_sample_npz", real)
    parts = sf.parts_dir(out)
    assert not out.exists() and sorted(p.name for p in parts.iterdir()) == ["chunk_0000000.npz", "job.json"]

    with pytest.raises(ValueError, match="half-written job with other settings.*seed"):
        sf.sample_model_to_npz(model_dir, out, 6, seed=1, batch_size=2, progress=False)  # never mixes runs
    summary = sf.sample_model_to_npz(model_dir, out, 6, batch_size=2, progress=False)
    assert (summary["chunks_skipped"], summary["chunks_drawn"]) == (1, 2)
    a, b = sf.load_sample_npz(out), sf.load_sample_npz(fresh["out"])
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert sf.sample_model_to_npz(model_dir, out, 6, batch_size=2, progress=False)["already_finished"]
    with pytest.raises(ValueError, match="already exists and holds other samples.*num"):
        sf.sample_model_to_npz(model_dir, out, 4, batch_size=2, progress=False)


def test_latent_model_is_decoded_with_the_recorded_vae(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        layers_per_block=1, norm_num_groups=4, sample_size=16).eval()
    vae.save_pretrained(tmp_path / "vae")
    record = VAERecord(str(tmp_path / "vae"), 0.5)
    torch.manual_seed(0)
    model = randomize(ACDiT(ACDiTConfig.preset("tiny", in_channels=4, num_classes=3)), std=0.05).eval()
    directory = save_pretrained(model, tmp_path / "latent", extra_config={"_vae": record.to_dict()})
    out = sf.sample_model_to_npz(directory, tmp_path / "s.npz", 3, batch_size=2, num_steps=2, cfg_scale=1.0,
                                 progress=False)["out"]
    file = sf.load_sample_npz(out)
    assert file.images.shape == (3, 16, 16, 3)  # 8x8 latents decoded to 16x16 RGB
    latents = sample(model, torch.tensor([0, 1]), SamplingSettings(cfg_scale=1.0, num_steps=2),
                     generator=make_generators([0, 1]))
    assert np.array_equal(file.images[:2], sf.to_uint8(record.decode(vae, latents)))
    assert file.job["vae"] == record.to_dict()


def test_two_torchrun_ranks_write_the_same_file_as_one(model_dir, tmp_path):
    one = sf.sample_model_to_npz(model_dir, tmp_path / "one.npz", 7, batch_size=2, progress=False)["out"]
    env = {**os.environ, "PYTHONPATH": str(Path(ardiff.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "ardiff.cli", "sample-npz", str(model_dir), "-n", "7", "--batch-size", "2",
                           "--out", str(tmp_path / "two.npz"), "--no-progress", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 0 of 2" in done.stdout
    a, b = sf.load_sample_npz(one), sf.load_sample_npz(tmp_path / "two.npz")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.job == b.job


def test_chunks_are_shared_out_round_robin():
    assert sf.chunk_starts(7, 2, 0, 2) == [0, 4] and sf.chunk_starts(7, 2, 1, 2) == [2, 6]
    assert sorted(sf.chunk_starts(10, 3, 0, 3) + sf.chunk_starts(10, 3, 1, 3) + sf.chunk_starts(10, 3, 2, 3)) == \
        sf.chunk_starts(10, 3)
