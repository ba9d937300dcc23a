"""Scoring sample files against named references: Inception-shaped and Fashion-MNIST networks
(tiny random stand-ins run through the production wrappers), folders and .npz references,
cached statistics, FID(ref, ref) = 0, the real-data floor, and references that do not fit."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ardiff.eval.evaluate import evaluate_against_reference, evaluate_samples
from ardiff.eval.fmnist_classifier import FashionMNISTClassifier
from ardiff.eval.metrics import FeatureStats
from ardiff.eval.reference import build_network, check_compatible, load_reference, reference_features
from ardiff.eval.sample_files import from_uint8, save_sample_npz


class InceptionShaped(nn.Module):
    """torch-fidelity's interface: uint8 (N, 3, H, W) -> (2048-d features, 1008 logits), resizing inside
    (to 32 px here, not 299, to stay fast)."""

    def __init__(self, dim: int = 2048):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, stride=2)
        self.fc = nn.Linear(16 * 16, dim)
        self.logits = nn.Linear(dim, 1008)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        x = nn.functional.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
        h = nn.functional.adaptive_avg_pool2d(self.conv(x), 4).flatten(1)
        f = torch.relu(self.fc(h))
        return f, self.logits(f)


def _inception(tmp_path, dim=2048):
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"stand-in weights")  # the path is named and hashed; the module is injected
    return build_network(f"inception:{weights}", network=InceptionShaped(dim))


@pytest.fixture
def inception(tmp_path):
    return _inception(tmp_path)


@pytest.fixture
def narrow_inception(tmp_path):
    """The same wrapper with 256-d features: a 2048-d Frechet distance costs seconds on one thread."""
    return _inception(tmp_path, 256)


def _images(n, size, channels, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_fid_of_a_reference_with_itself_is_exactly_zero_and_stats_are_cached(tmp_path, inception):
    ref_path = save_sample_npz(tmp_path / "ref.npz", _images(40, 16, 3, 0))
    samples = from_uint8(_images(10, 16, 3, 1))
    ref = load_reference(str(ref_path), tuple(samples.shape[1:]))
    first = evaluate_samples(samples, None, ref, inception)
    assert not first["reference_stats_cached"]
    cache = tmp_path / f"ref.{inception.id}.stats.npz"
    assert cache.is_file()
    again = reference_features(ref, inception, tuple(samples.shape[1:]))
    assert again.cached and torch.equal(again.stats.mean, FeatureStats.from_features(again.features).mean)
    assert first["fid_inception"] > 0 and "is_inception" in first
    assert first["real_data_floor"]["num"] == 10 and first["fid_inception_floor"] > 0  # 40 >= 2 * 10
    assert first["feature_network"]["name"] == "inception" and first["reference"]["num"] == 40

    self_score = evaluate_samples(ref.samples, None, ref, inception)
    assert self_score["fid_inception"] == 0.0
    assert isinstance(self_score["real_data_floor"], str)  # 40 < 2 * 40: too small to split

    # A changed reference is not served from the stale cache.
    save_sample_npz(ref_path, _images(40, 16, 3, 7))
    ref2 = load_reference(str(ref_path), tuple(samples.shape[1:]))
    changed = reference_features(ref2, inception, tuple(samples.shape[1:]))
    assert not changed.cached and not torch.equal(changed.stats.mean, again.stats.mean)


def test_statistics_file_folder_and_grey_reference(tmp_path, narrow_inception):
    inception = narrow_inception
    images = _images(30, 16, 1, 2)
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im[..., 0], mode="L").save(tmp_path / "folder" / ("sub" if i % 2 else "") / f"{i:03d}.png")
    samples = from_uint8(_images(8, 16, 3, 3))
    folder = load_reference(str(tmp_path / "folder"), tuple(samples.shape[1:]))
    assert folder.samples.shape[1] == 1  # grey stays grey; the network repeats it to RGB
    npz = load_reference(str(save_sample_npz(tmp_path / "grey.npz", images)), tuple(samples.shape[1:]))
    by_folder = evaluate_samples(samples, None, folder, inception, save_stats=tmp_path / "stats.npz")
    by_npz = evaluate_samples(samples, None, npz, inception, use_cache=False)
    assert by_folder["fid_inception"] == pytest.approx(by_npz["fid_inception"], rel=1e-6)  # same pixels, other order
    assert (tmp_path / f"folder.{inception.id}.stats.npz").is_file()

    with np.load(tmp_path / "stats.npz") as s:  # ADM's keys
        mu, sigma = s["mu"], s["sigma"]
    np.savez(tmp_path / "mu_sigma.npz", mu=mu, sigma=sigma)
    stats_only = load_reference(str(tmp_path / "mu_sigma.npz"), tuple(samples.shape[1:]))
    by_stats = evaluate_samples(samples, None, stats_only, inception)
    assert by_stats["fid_inception"] == pytest.approx(by_folder["fid_inception"], rel=1e-9)
    assert "kid_inception" not in by_stats and "statistics only" in by_stats["real_data_floor"]


def test_references_that_do_not_fit_are_refused(tmp_path, inception):
    samples = from_uint8(_images(4, 16, 3, 0))
    big = load_reference(str(save_sample_npz(tmp_path / "big.npz", _images(8, 32, 3, 1))), (3, 16, 16))
    with pytest.raises(ValueError, match="32x32.*samples 16x16.*same size|is 32x32"):
        reference_features(big, inception, tuple(samples.shape[1:]))
    np.savez(tmp_path / "two.npz", arr_0=_images(8, 16, 2, 1))
    with pytest.raises(ValueError, match=r"C = 1 \(grey\) or 3 \(RGB\)"):
        load_reference(str(tmp_path / "two.npz"), (3, 16, 16))
    fmnist = build_network("fmnist", network=FashionMNISTClassifier().eval())
    rgb = load_reference(str(save_sample_npz(tmp_path / "rgb.npz", _images(8, 32, 3, 1))), (1, 32, 32))
    with pytest.raises(ValueError, match="fmnist network reads grey images.*3 channels"):
        reference_features(rgb, fmnist, (1, 32, 32))
    small = load_reference(str(save_sample_npz(tmp_path / "small.npz", _images(8, 16, 1, 1))), (1, 32, 32))
    with pytest.raises(ValueError, match="at least 28x28.*16x16"):
        reference_features(small, fmnist, (1, 32, 32))
    np.savez(tmp_path / "stats128.npz", mu=np.zeros(128), sigma=np.eye(128))
    with pytest.raises(ValueError, match="128-d features; the inception network gives 2048-d"):
        evaluate_samples(samples, None, load_reference(str(tmp_path / "stats128.npz"), (3, 16, 16)), inception)


def test_fmnist_features_with_labels_give_class_accuracy(tmp_path):
    classifier = FashionMNISTClassifier().eval()
    ref_images = _images(60, 28, 1, 5)
    ref_path = save_sample_npz(tmp_path / "ref.npz", ref_images)
    sample_path = save_sample_npz(tmp_path / "s.npz", _images(10, 32, 1, 6), np.arange(10) % 10)
    result = evaluate_against_reference(str(sample_path), str(ref_path), "fmnist", network=classifier)
    assert result["num_samples"] == 10 and 0 <= result["class_accuracy"] <= 1
    assert result["fid_fmnist_floor"] > 0 and result["real_data_floor"]["against"] == 50
    same = evaluate_against_reference(str(ref_path), str(ref_path), "fmnist", network=classifier)
    assert same["fid_fmnist"] == 0.0


def test_grey_stored_as_rgb_reads_as_grey_for_the_fmnist_network_and_colour_is_refused(tmp_path):
    classifier = FashionMNISTClassifier().eval()
    grey_ref, grey_samples = _images(60, 28, 1, 5), _images(10, 32, 1, 6)
    labels = np.arange(10) % 10
    files = {
        "grey": (save_sample_npz(tmp_path / "ref1.npz", grey_ref),
                 save_sample_npz(tmp_path / "s1.npz", grey_samples, labels)),
        "grey_as_rgb": (save_sample_npz(tmp_path / "ref3.npz", grey_ref.repeat(3, axis=-1)),  # ADM's layout
                        save_sample_npz(tmp_path / "s3.npz", grey_samples.repeat(3, axis=-1), labels)),
    }
    scores = {name: evaluate_against_reference(str(s), str(ref), "fmnist", network=classifier)
              for name, (ref, s) in files.items()}
    for key in ("fid_fmnist", "kid_fmnist", "class_accuracy", "fid_fmnist_floor"):
        assert scores["grey_as_rgb"][key] == scores["grey"][key], key
    # the reference alone (a model's samples are checked against it before sampling)
    fmnist = build_network("fmnist", network=classifier)
    check_compatible(load_reference(str(files["grey_as_rgb"][0]), (1, 32, 32)), (1, 32, 32), fmnist)
    # one pixel of one channel differs: that is colour, refused as before
    colour = grey_ref.repeat(3, axis=-1)
    colour[3, 10, 10, 2] ^= 1
    colour_ref = save_sample_npz(tmp_path / "colour.npz", colour)
    with pytest.raises(ValueError, match=r"the fmnist network reads grey images; the reference .*colour.npz have 3 "
                                         r"channels \(use inception:PATH for RGB data\)"):
        evaluate_against_reference(str(files["grey"][1]), str(colour_ref), "fmnist", network=classifier)
    colour_samples = save_sample_npz(tmp_path / "colour_samples.npz", colour[:10])
    with pytest.raises(ValueError, match=r"the fmnist network reads grey images; the samples have 3 channels"):
        evaluate_against_reference(str(colour_samples), str(files["grey"][0]), "fmnist", network=classifier)


class I3DShaped(nn.Module):
    """Called like the FVD literature's TorchScript I3D: float [0, 255] clips (N, 3, F, H, W) -> 400-d features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(3 * 4, 400)

    def forward(self, x, rescale=False, resize=False, return_features=False):
        assert rescale and resize and return_features and x.shape[1] == 3 and x.max() > 1
        return torch.tanh(self.proj(x.mean((3, 4)).flatten(1) / 255))


def test_clips_against_clips_with_an_i3d_shaped_network(tmp_path):
    weights = tmp_path / "i3d_torchscript.pt"
    weights.write_bytes(b"stand-in")
    i3d = build_network(f"i3d:{weights}", network=I3DShaped())
    rng = np.random.default_rng(0)
    ref = save_sample_npz(tmp_path / "ref.npz", rng.integers(0, 256, (24, 4, 8, 8, 1), dtype=np.uint8))
    samples = save_sample_npz(tmp_path / "s.npz", rng.integers(0, 256, (6, 4, 8, 8, 1), dtype=np.uint8))
    result = evaluate_against_reference(str(samples), str(ref), f"i3d:{weights}", network=I3DShaped())
    assert result["fvd_i3d"] > 0 and result["fvd_i3d_floor"] > 0 and result["feature_network"]["name"] == "i3d"
    assert evaluate_against_reference(str(ref), str(ref), f"i3d:{weights}", network=I3DShaped())["fvd_i3d"] == 0.0
    with pytest.raises(ValueError, match="i3d reads clips"):
        from ardiff.eval.reference import sample_features

        sample_features(i3d, torch.zeros(2, 3, 8, 8))
    short = load_reference(str(save_sample_npz(tmp_path / "short.npz", np.zeros((4, 2, 8, 8, 1), np.uint8))),
                           (1, 4, 8, 8))
    with pytest.raises(ValueError, match="2x8x8.*4x8x8"):
        reference_features(short, i3d, (1, 4, 8, 8))


def test_a_model_is_sampled_then_scored(tmp_path):
    from ardiff import ACDiT, ACDiTConfig, Pipeline
    from ardiff.models.checkpoint import save_pretrained
    from helpers import randomize

    torch.manual_seed(0)
    directory = save_pretrained(randomize(ACDiT(ACDiTConfig.preset("tiny", num_classes=2)), std=0.05),
                                tmp_path / "model")
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"stand-in")
    ref = save_sample_npz(tmp_path / "ref.npz", _images(12, 8, 3, 0))
    pipe = Pipeline.from_pretrained(directory, device="cpu", num_steps=2)
    result = evaluate_against_reference(pipe, str(ref), f"inception:{weights}", num=4, network=InceptionShaped(64))
    assert result["num_samples"] == 4 and result["num_steps"] == 2 and result["fid_inception"] > 0
    assert result["fid_inception_floor"] > 0  # 12 >= 2 * 4
    with pytest.raises(ValueError, match="is 16x16.*samples 8x8"):  # refused before sampling
        evaluate_against_reference(Pipeline.from_pretrained(directory, device="cpu"),
                                   str(save_sample_npz(tmp_path / "big.npz", _images(4, 16, 3, 0))),
                                   f"inception:{weights}", num=4, network=InceptionShaped(64))
