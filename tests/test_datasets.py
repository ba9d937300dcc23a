import json
import os
import random
import warnings

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ardiff import ACDiTConfig
from ardiff.data import (
    ImageFolder,
    LatentDataset,
    MovingFashionMNIST,
    VideoFolder,
    decode_latents,
    encode_latent_cache,
    load_fashion_mnist,
    load_vae,
)
from ardiff.data.fashion_mnist import DEBIAN_DIR
from ardiff.train.config import DataConfig
from ardiff.train.datasets import DATASETS, build_dataset

HAVE_FMNIST = (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed")
CODEC = next((c for c in ("mpeg4", "libx264") if c in av.codec.codecs_available), None)
needs_codec = pytest.mark.skipif(CODEC is None, reason="PyAV has neither the mpeg4 nor the libx264 encoder")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round()


# -- image folder ---------------------------------------------------------------------------


def save_image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def half_white(h=16, w=16):
    """Left half white, right half black: shows whether an image was flipped."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = 255
    return a


def test_image_folder_layout_labels_and_extensions(tmp_path):
    img = half_white()
    save_image(tmp_path / "cat" / "a.JPG", img)
    save_image(tmp_path / "cat" / "b.png", img)
    save_image(tmp_path / "cat" / ".hidden.png", img)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    save_image(tmp_path / "dog" / "sub" / "c.webp", img)
    save_image(tmp_path / "ant" / "d.bmp", img)
    save_image(tmp_path / ".cache" / "e.png", img)
    ds = ImageFolder(tmp_path, 8)
    assert ds.classes == ["ant", "cat", "dog"] and ds.num_classes == 3
    assert [(p.name, y) for p, y in ds.samples] == [("d.bmp", 0), ("a.JPG", 1), ("b.png", 1), ("c.webp", 2)]
    x, y = ds[3]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == 2
    assert -1 <= x.min() and x.max() <= 1
    with pytest.raises(IndexError):
        ds[4]


def test_image_folder_center_crop_and_colour_modes(tmp_path):
    # 80x20 (W x H): red | green (middle half) | blue. Short side to 10 (one BOX halving to
    # 40x10), centre 10x10 crop = columns 15..25 of the 40, all inside the green band.
    a = np.zeros((20, 80, 3), np.uint8)
    a[:, :20, 0] = 255
    a[:, 20:60, 1] = 255
    a[:, 60:, 2] = 255
    save_image(tmp_path / "c" / "wide.png", a)
    Image.fromarray(np.full((30, 30), 200, np.uint8), mode="L").save(tmp_path / "c" / "gray.png")
    Image.fromarray(np.full((12, 9, 4), 100, np.uint8), mode="RGBA").save(tmp_path / "c" / "rgba.png")
    ds = ImageFolder(tmp_path, 10, hflip=False)
    gray, rgba, wide = (ds[i][0] for i in range(3))
    assert torch.equal(to_uint8(wide), torch.tensor([0.0, 255, 0]).view(3, 1, 1).expand(3, 10, 10))
    assert gray.shape == rgba.shape == (3, 10, 10)
    assert torch.allclose(to_uint8(gray), torch.full((3, 10, 10), 200.0), atol=1)  # L -> RGB
    assert torch.allclose(to_uint8(rgba), torch.full((3, 10, 10), 100.0), atol=1)  # alpha dropped, upscaled


def test_image_folder_flip_is_random_but_reproducible(tmp_path):
    for i in range(16):
        save_image(tmp_path / "c" / f"{i:02d}.png", half_white())

    def flips(**kw):
        ds = ImageFolder(tmp_path, 8, **kw)
        return [bool(ds[i][0][0, 0, 0] < 0) for i in range(len(ds))]  # left column black: flipped

    seed0 = flips(seed=0)
    assert 0 < sum(seed0) < 16
    assert flips(seed=0) == seed0
    assert flips(seed=1) != seed0
    assert not any(flips(hflip=False))


def test_image_folder_corrupt_files(tmp_path):
    good = tmp_path / "c" / "b_good.png"
    save_image(good, half_white())
    bad = tmp_path / "c" / "a_bad.png"
    bad.write_bytes(random.Random(1).randbytes(300))
    truncated = tmp_path / "c" / "c_truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:600])

    ds = ImageFolder(tmp_path, 8, hflip=False)
    with pytest.raises(ValueError, match=r"cannot read image .*a_bad\.png"):
        ds[0]
    with pytest.raises(ValueError, match=r"cannot read image .*c_truncated\.jpg"):
        ds[2]

    ds = ImageFolder(tmp_path, 8, hflip=False, skip_corrupt=True)
    with pytest.warns(UserWarning, match=r"skipping an unreadable image file \(1 skipped so far\): .*a_bad\.png"):
        x, _ = ds[0]
    assert torch.equal(x, ds[1][0])  # the next readable file stands in
    with pytest.warns(UserWarning, match=r"\(2 skipped so far\): .*c_truncated\.jpg"):
        ds[2]  # wraps around to the first readable file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known bad file is skipped silently and counted once
        assert torch.equal(ds[0][0], x)
    assert ds.num_skipped == 2 and ds.skipped_files == [str(bad), str(truncated)]

    good.unlink()
    ds = ImageFolder(tmp_path, 8, skip_corrupt=True)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"none of the 2 image files"):
        ds[0]


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image folder .*missing does not exist; expected .*<class name>"):
        ImageFolder(tmp_path / "missing", 8)
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} has no class subdirectories"):
        ImageFolder(tmp_path, 8)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"no image files in the 1 class directories of .*\.jpg"):
        ImageFolder(tmp_path, 8)
    with pytest.raises(ValueError, match=r"image_size=0"):
        ImageFolder(tmp_path, 0)


# -- video folder ---------------------------------------------------------------------------

LEFT_OFFSET = 40  # the left half of frame t is 6t + 40, the right half 6t


def write_video(path, num_frames, height=32, width=40):
    """A small video whose frames encode their index (right half 6t) and orientation (left brighter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(CODEC, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 4_000_000
        for t in range(num_frames):
            a = np.full((height, width, 3), 6 * t, np.uint8)
            a[:, : width // 2] += LEFT_OFFSET
            out.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(stream.encode())


def clip_frames(x):
    """Frame indices and per-frame 'left half brighter' of a decoded (3, F, 16, 16) clip."""
    v = to_uint8(x).mean(0)  # (F, H, W)
    left, right = v[:, :, :6].mean((1, 2)), v[:, :, 10:].mean((1, 2))
    dim = torch.minimum(left, right)
    assert torch.allclose((left - right).abs(), torch.full_like(dim, LEFT_OFFSET), atol=4)
    return (dim / 6).round().long().tolist(), (left > right).tolist()


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "b_walk" / "v1.mp4", 24)
    write_video(root / "b_walk" / "v2.AVI", 24)
    write_video(root / "a_run" / "v0.mkv", 24)
    return root


@needs_codec
def test_video_folder_clip_sampling(video_root):
    ds = VideoFolder(video_root, 16, num_frames=4, frame_stride=3, hflip=False)
    assert ds.classes == ["a_run", "b_walk"] and len(ds) == 3 and ds.window == 10
    x, y = ds[1]
    assert x.shape == (3, 4, 16, 16) and x.dtype == torch.float32 and int(y) == 1
    assert -1 <= x.min() and x.max() <= 1
    starts = set()
    for seed in range(6):
        ds = VideoFolder(video_root, 16, num_frames=4, frame_stride=3, hflip=False, seed=seed)
        for i in range(3):
            frames, left_brighter = clip_frames(ds[i][0])
            assert frames == list(range(frames[0], frames[0] + 10, 3)) and 0 <= frames[0] <= 14
            assert all(left_brighter)
            starts.add(frames[0])
    assert len(starts) > 1  # the window start is random
    again = VideoFolder(video_root, 16, num_frames=4, frame_stride=3, hflip=False, seed=5)
    assert torch.equal(again[2][0], ds[2][0])  # ... and a function of (seed, index)


@needs_codec
def test_video_folder_flips_whole_clips(video_root):
    orientations = set()
    for seed in range(8):
        ds = VideoFolder(video_root, 16, num_frames=3, frame_stride=2, seed=seed)
        _, left_brighter = clip_frames(ds[0][0])
        assert len(set(left_brighter)) == 1  # one flip for all frames of a clip
        orientations.add(left_brighter[0])
    assert orientations == {True, False}


@needs_codec
def test_video_folder_short_and_corrupt_videos(tmp_path):
    write_video(tmp_path / "c" / "b_short.mp4", 5)
    write_video(tmp_path / "c" / "c_ok.mp4", 12)
    (tmp_path / "c" / "a_corrupt.mp4").write_bytes(random.Random(0).randbytes(2000))  # fixed bytes: same error each run
    ds = VideoFolder(tmp_path, 8, num_frames=4, frame_stride=3)
    with pytest.raises(ValueError, match=r"cannot decode video .*a_corrupt\.mp4"):
        ds[0]
    with pytest.raises(ValueError, match=r"video .*b_short\.mp4 has 5 frames, fewer than the 10"):
        ds[1]
    assert ds[2][0].shape == (3, 4, 8, 8)

    ds = VideoFolder(tmp_path, 8, num_frames=4, frame_stride=3, skip_corrupt=True)
    with pytest.warns(UserWarning) as record:
        x, y = ds[0]  # the short video right after the corrupt one is skipped too
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and "a_corrupt.mp4" in messages[0] and "b_short.mp4 has 5 frames" in messages[1]
    assert x.shape == (3, 4, 8, 8) and int(y) == 0
    assert ds.num_skipped == 2
    assert [os.path.basename(f) for f in ds.skipped_files] == ["a_corrupt.mp4", "b_short.mp4"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(ds[0][0], x) and ds[1][0].shape == (3, 4, 8, 8)
    assert ds.num_skipped == 2


def test_video_folder_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"num_frames=0 and frame_stride=1 must both be > 0"):
        VideoFolder(tmp_path, 8, num_frames=0)
    with pytest.raises(FileNotFoundError, match=r"no video files .*\.avi, \.mp4"):
        (tmp_path / "cls").mkdir()
        VideoFolder(tmp_path, 8)


# -- moving Fashion-MNIST --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist_test():
    return load_fashion_mnist(split="test")


@needs_fmnist
def test_moving_fmnist_shape_range_label_and_determinism(fmnist_test):
    images, labels = fmnist_test
    ds = MovingFashionMNIST("test", num_frames=8, canvas_size=40, num_items=2, num_videos=20, seed=3)
    assert len(ds) == 20 and ds.num_classes == 10
    full_pass = [ds[i] for i in range(len(ds))]
    x, y = full_pass[5]
    assert x.shape == (1, 8, 40, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == -1 and x.max() <= 1
    items, _ = ds.tracks(5)
    assert int(y) == int(labels[items[0]])
    alone = MovingFashionMNIST("test", num_frames=8, canvas_size=40, num_items=2, num_videos=20, seed=3)[5]
    assert torch.equal(alone[0], x) and alone[1] == y  # video 5 alone == video 5 of a full pass
    assert torch.equal(ds[-15][0], x)
    other = MovingFashionMNIST("test", num_frames=8, canvas_size=40, num_items=2, num_videos=20, seed=4)
    assert not torch.equal(other[5][0], x)
    assert not torch.equal(full_pass[4][0], x)
    with pytest.raises(IndexError, match=r"video index 20 out of range for num_videos=20"):
        ds[20]


@needs_fmnist
def test_moving_fmnist_bounces_and_draws_real_items(fmnist_test):
    images, _ = fmnist_test
    ds = MovingFashionMNIST("test", num_frames=40, canvas_size=40, speed=5.0, num_videos=8, seed=0)
    limit = 40 - 28
    bounced = False
    for i in range(len(ds)):
        x, _ = ds[i]
        (item,), pos = ds.tracks(i)
        pos = pos[:, 0]  # (F, 2) top-left (row, col)
        assert pos.min() >= 0 and pos.max() <= limit
        step = pos.diff(dim=0).float()
        assert step.norm(dim=1).max() <= 5.0 + 1.5  # constant speed, up to rounding
        bounced |= bool((step[1:] * step[:-1] < 0).any())  # some coordinate reversed direction
        for t in range(ds.num_frames):
            r, c = pos[t].tolist()
            frame = x[0, t].clone()
            # the whole real item is on the canvas, and nothing else is
            assert torch.equal(frame[r:r + 28, c:c + 28], images[item].float() / 127.5 - 1)
            frame[r:r + 28, c:c + 28] = -1
            assert (frame == -1).all()
    assert bounced


@needs_fmnist
def test_moving_fmnist_items_combine_by_max(fmnist_test):
    images, _ = fmnist_test
    ds = MovingFashionMNIST("test", num_frames=4, canvas_size=32, num_items=3, num_videos=2, seed=1)
    x, _ = ds[1]
    items, pos = ds.tracks(1)
    expected = torch.zeros(4, 32, 32, dtype=torch.uint8)
    for t in range(4):
        for k in range(3):
            r, c = pos[t, k].tolist()
            region = expected[t, r:r + 28, c:c + 28]
            region.copy_(torch.maximum(region, images[items[k]]))
    assert torch.equal(x[0], expected.float() / 127.5 - 1)


def test_moving_fmnist_argument_errors():
    with pytest.raises(ValueError, match=r"canvas_size=20 must be >= 28"):
        MovingFashionMNIST(canvas_size=20)
    with pytest.raises(ValueError, match=r"split='val'"):
        MovingFashionMNIST(split="val")
    with pytest.raises(ValueError, match=r"speed=-1 must be >= 0"):
        MovingFashionMNIST(speed=-1)


# -- latent cache ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def image_dataset(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, torch.arange(n) % 3)


def test_latent_cache_roundtrip(vae_dir, tmp_path):
    data = image_dataset()
    meta = encode_latent_cache(data, vae_dir, tmp_path / "cache", shard_size=5, batch_size=4)
    names = ["latents_00000.safetensors", "latents_00001.safetensors", "latents_00002.safetensors"]
    assert sorted(os.listdir(tmp_path / "cache")) == names + ["meta.json"]  # no temp files left
    on_disk = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert on_disk == meta
    assert meta["count"] == 12 and meta["latent_shape"] == [4, 8, 8] and meta["sample_shape"] == [3, 16, 16]
    assert [s["count"] for s in meta["shards"]] == [5, 5, 2] and [s["file"] for s in meta["shards"]] == names
    assert meta["scaling_factor"] == pytest.approx(0.18215) and meta["shift_factor"] == 0.0
    assert meta["vae_dir"] == str(vae_dir.resolve())
    shard = load_file(tmp_path / "cache" / names[1])
    assert shard["latents"].shape == (5, 4, 8, 8) and shard["latents"].dtype == torch.float32
    assert shard["labels"].tolist() == [5 % 3, 6 % 3, 7 % 3, 8 % 3, 9 % 3]

    vae = load_vae(vae_dir)
    with torch.no_grad():
        expected = vae.encode(data.tensors[0]).latent_dist.mean * vae.config.scaling_factor
    ds = LatentDataset(tmp_path / "cache")
    assert len(ds) == 12 and ds.latent_shape == (4, 8, 8) and ds.scaling_factor == pytest.approx(0.18215)
    for i in range(12):  # crosses both shard boundaries
        z, y = ds[i]
        assert z.shape == (4, 8, 8) and z.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.allclose(z, expected[i], atol=1e-5) and int(y) == i % 3
    assert torch.equal(ds[-1][0], ds[11][0])
    with pytest.raises(IndexError):
        ds[12]

    encode_latent_cache(data, vae_dir, tmp_path / "again", shard_size=5, batch_size=3)
    for name in names:  # the means are deterministic, and independent of the batch size
        a, b = load_file(tmp_path / "cache" / name), load_file(tmp_path / "again" / name)
        assert torch.allclose(a["latents"], b["latents"], atol=1e-6) and torch.equal(a["labels"], b["labels"])

    images = decode_latents(vae, torch.stack([ds[0][0], ds[1][0]]), ds.scaling_factor)
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1


def test_latent_cache_of_clips_in_float16(vae_dir, tmp_path):
    clips = torch.rand(3, 3, 2, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    data = torch.utils.data.TensorDataset(clips, torch.tensor([4, 5, 6]))
    meta = encode_latent_cache(data, vae_dir, tmp_path, shard_size=2, dtype=torch.float16)
    assert meta["latent_shape"] == [4, 2, 8, 8] and meta["dtype"] == "float16"
    ds = LatentDataset(tmp_path)
    vae = load_vae(vae_dir)
    with torch.no_grad():
        frame1 = vae.encode(clips[2, :, 1][None]).latent_dist.mean[0] * ds.scaling_factor
    z, y = ds[2]
    assert z.shape == (4, 2, 8, 8) and z.dtype == torch.float32 and int(y) == 6
    assert torch.allclose(z[:, 1], frame1, atol=1e-3)
    video = decode_latents(vae, z[None], ds.scaling_factor)
    assert video.shape == (1, 3, 2, 16, 16)


def test_latent_cache_errors(vae_dir, tmp_path):
    data = image_dataset(6)
    with pytest.raises(FileNotFoundError, match=r"VAE directory .*no_vae not found"):
        encode_latent_cache(data, tmp_path / "no_vae", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"meta\.json not found"):
        LatentDataset(tmp_path)
    cache = tmp_path / "cache"
    encode_latent_cache(data, vae_dir, cache, shard_size=4)
    with pytest.raises(FileExistsError, match=r"already holds a latent cache"):
        encode_latent_cache(data, vae_dir, cache)
    gray = torch.utils.data.TensorDataset(torch.zeros(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match=r"samples have shape \(1, 16, 16\)"):
        encode_latent_cache(gray, vae_dir, tmp_path / "gray")

    second = cache / "latents_00001.safetensors"
    intact = second.read_bytes()
    second.write_bytes(intact[:-16])
    with pytest.raises(ValueError, match=r"latent shard .*latents_00001\.safetensors is corrupt: tensor .* truncated"):
        LatentDataset(cache)
    second.write_bytes(os.urandom(len(intact)))
    with pytest.raises(ValueError, match=r"latent shard .*latents_00001\.safetensors is corrupt"):
        LatentDataset(cache)
    second.unlink()
    with pytest.raises(FileNotFoundError, match=r"latents_00001\.safetensors listed in .*meta\.json is missing"):
        LatentDataset(cache)


# -- build_dataset --------------------------------------------------------------------------


def test_build_dataset(tmp_path, vae_dir):
    model = ACDiTConfig.preset("tiny")  # input_size (8, 8)
    for i in range(2):
        save_image(tmp_path / "imgs" / "c" / f"{i}.png", half_white(20, 30))
    ds = build_dataset(DataConfig(name="image_folder", root=str(tmp_path / "imgs"), hflip=False), model)
    assert isinstance(ds, ImageFolder) and ds[0][0].shape == (3, 8, 8)
    ds = build_dataset(DataConfig(name="image_folder", root=str(tmp_path / "imgs"), image_size=12))
    assert ds[0][0].shape == (3, 12, 12)
    with pytest.raises(ValueError, match=r"data.image_size is required for data.name='image_folder'"):
        build_dataset(DataConfig(name="image_folder", root=str(tmp_path / "imgs")))
    for name in ("image_folder", "video_folder", "latents"):
        with pytest.raises(ValueError, match=rf"data.root is required for data.name={name}"):
            build_dataset(DataConfig(name=name), model)
    with pytest.raises(ValueError, match=r"data.name='nope' is not a known dataset; choose one of fashion_mnist, "):
        build_dataset(DataConfig(name="nope"))
    assert set(DATASETS) == {"fashion_mnist", "moving_fashion_mnist", "stories", "story_frames", "image_folder",
                             "video_folder", "latents"}

    encode_latent_cache(image_dataset(3), vae_dir, tmp_path / "lat")
    ds = build_dataset(DataConfig(name="latents", root=str(tmp_path / "lat")), model)
    assert isinstance(ds, LatentDataset) and len(ds) == 3

    if CODEC:
        write_video(tmp_path / "vids" / "c" / "v.mp4", 6)
        video_model = ACDiTConfig.preset("tiny", input_size=(3, 8, 8), block_layout="raster", block_size=16,
                                         rope_axis_weights=(2, 1, 1))
        cfg = DataConfig(name="video_folder", root=str(tmp_path / "vids"), num_frames=3, frame_stride=2)
        ds = build_dataset(cfg, video_model)
        assert isinstance(ds, VideoFolder) and ds[0][0].shape == (3, 3, 8, 8)


@needs_fmnist
def test_build_moving_fashion_mnist():
    cfg = DataConfig(name="moving_fashion_mnist", split="test", num_frames=5, canvas_size=36, num_items=2,
                     speed=3.0, num_videos=7, seed=2)
    ds = build_dataset(cfg)
    assert isinstance(ds, MovingFashionMNIST) and len(ds) == 7
    assert (ds.num_frames, ds.canvas_size, ds.num_items, ds.speed, ds.seed) == (5, 36, 2, 3.0, 2)
    assert ds[0][0].shape == (1, 5, 36, 36)


def test_latent_cache_with_moments_draws_posterior_samples(vae_dir, tmp_path):
    data = image_dataset(n=6)
    meta = encode_latent_cache(data, vae_dir, tmp_path / "cache", shard_size=4, moments=True)
    assert meta["moments"] is True
    ds = LatentDataset(tmp_path / "cache")
    vae = load_vae(vae_dir)
    with torch.no_grad():
        dist = vae.encode(data.tensors[0]).latent_dist
    mean, _ = ds[5]  # indexing still gives the (scaled) mean
    assert torch.allclose(mean, dist.mean[5] * ds.scaling_factor, atol=1e-5)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a, b, c = ds.draw(5, g(1))[0], ds.draw(5, g(1))[0], ds.draw(5, g(2))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    eps = torch.randn(mean.shape, generator=g(1))
    assert torch.allclose(a, (dist.mean[5] + dist.std[5] * eps) * ds.scaling_factor, atol=1e-5)
    plain = LatentDataset(encode_latent_cache(data, vae_dir, tmp_path / "plain", shard_size=4) and tmp_path / "plain")
    assert not plain.moments and torch.equal(plain.draw(5, g(1))[0], plain[5][0])


def test_trainer_draws_a_posterior_sample_per_step_and_position(vae_dir, tmp_path):
    from ardiff.train import Trainer, load_run_config

    encode_latent_cache(image_dataset(n=6), vae_dir, tmp_path / "cache", shard_size=4, moments=True)
    run = load_run_config("fmnist", [f"train.out_dir={tmp_path / 'run'}", "data.name=latents",
                                     f"data.root={tmp_path / 'cache'}", "model.input_size=[8, 8]",
                                     "model.in_channels=4", "model.patch_size=2", "model.block_size=4",
                                     "model.depth=1", "model.hidden_size=32", "model.num_heads=1",
                                     "model.num_classes=3", "train.batch_size=2", "train.tensorboard=false",
                                     "sample.num_images=0", "sample.clip_denoised=false"])
    trainer = Trainer(run, device="cpu", progress=False)
    idx = torch.tensor([3, 3])
    x0, _ = trainer.batch(idx, step=0, first=0)
    x0b, _ = trainer.batch(idx[1:], step=0, first=1)
    x1, _ = trainer.batch(idx, step=1, first=0)
    assert not torch.equal(x0[0], x0[1])  # two positions: two draws of the same item
    assert torch.equal(x0[1], x0b[0])  # a position's draw does not depend on the slice it is in
    assert not torch.equal(x0, x1)  # a new step: new draws
