"""Feature networks: local files only, the FVD I3D calling convention, clear errors."""

import builtins

import pytest
import torch

from ardiff.eval.evaluate import video_metrics
from ardiff.eval.features import FMNISTFeatures, FrameFeatures, I3DFeatures, InceptionFeatures
from ardiff.eval.fmnist_classifier import FashionMNISTClassifier
from ardiff.eval.metrics import frechet_distance


class TinyI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature, records what it was given."""

    def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        # features: per-channel mean and max over (F, H, W), and the frame count
        return torch.cat([x.mean((2, 3, 4)), x.amax((2, 3, 4)),
                          torch.full((x.shape[0], 1), float(x.shape[2]))], dim=1)


def test_i3d_from_a_local_torchscript_file(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    net = I3DFeatures(path, batch_size=3)
    clips = torch.rand(7, 1, 5, 8, 8) * 2 - 1
    feats, logits = net(clips)
    assert logits is None and feats.shape == (7, 7)
    # grey is repeated to RGB and [-1, 1] goes through the uint8 range and back
    expected_mean = (((clips + 1) * 127.5).round() / 127.5 - 1).mean((2, 3, 4))
    torch.testing.assert_close(feats[:, :3], expected_mean.repeat(1, 3), atol=1e-5, rtol=0)
    assert (feats[:, 6] == 5).all()
    with pytest.raises(ValueError, match=r"I3D reads clips \(N, C, F, H, W\)"):
        net(torch.zeros(2, 1, 8, 8))


def test_video_metrics_with_a_clip_network(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    i3d = I3DFeatures(path)
    frames = FMNISTFeatures.from_model(FashionMNISTClassifier().eval())
    g = torch.Generator().manual_seed(0)
    real = torch.rand(20, 1, 4, 28, 28, generator=g) * 2 - 1
    fake = torch.rand(20, 1, 4, 28, 28, generator=g) * 2 - 1
    m = video_metrics(fake, torch.arange(20) % 10, real, frames, i3d)
    assert m["fvd_i3d"] == pytest.approx(frechet_distance(i3d(real)[0], i3d(fake)[0]))
    assert "class_accuracy_frames" in m
    by_frame = m["class_accuracy_by_frame"]
    assert len(by_frame) == 4 and sum(by_frame) / 4 == pytest.approx(m["class_accuracy_frames"])
    assert video_metrics(real, torch.arange(20) % 10, real, frames, i3d)["fvd_i3d"] == pytest.approx(0, abs=1e-6)


def test_class_accuracy_by_frame_reads_each_frame_index():
    net = FMNISTFeatures.from_model(FashionMNISTClassifier().eval())
    g = torch.Generator().manual_seed(0)
    clips = torch.rand(12, 1, 3, 28, 28, generator=g) * 2 - 1
    predicted = net(clips[:, :, 1])[1].argmax(-1)  # labels that frame 1 is read as
    m = video_metrics(clips, predicted, clips, net)
    assert m["class_accuracy_by_frame"][1] == 1.0
    frame0 = (net(clips[:, :, 0])[1].argmax(-1) == predicted).float().mean().item()
    assert m["class_accuracy_by_frame"][0] == pytest.approx(frame0)


def test_frame_features_concatenate_frames():
    net = FMNISTFeatures.from_model(FashionMNISTClassifier().eval())
    clips = torch.rand(3, 1, 4, 28, 28) * 2 - 1
    f, _ = FrameFeatures(net)(clips)
    per_frame, _ = net(clips[:, :, 2])
    assert f.shape == (3, 4 * 128)
    torch.testing.assert_close(f[:, 2 * 128 : 3 * 128], per_frame)


def test_missing_weight_files_name_the_file_and_do_not_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        InceptionFeatures(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="nothing is downloaded"):
        I3DFeatures(None)


def test_inception_without_torch_fidelity_says_how_to_fix(tmp_path, monkeypatch):
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"")
    real_import = builtins.__import__

    def no_fidelity(name, *args, **kwargs):
        if name.startswith("torch_fidelity"):
            raise ImportError("No module named 'torch_fidelity'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fidelity)
    with pytest.raises(ImportError, match="pip install torch-fidelity"):
        InceptionFeatures(weights)


def test_frechet_distance_matches_torchmetrics():
    fid_module = pytest.importorskip("torchmetrics.image.fid")

    class Flatten(torch.nn.Module):
        num_features = 12

        def forward(self, x):
            return x.double().flatten(1)

    g = torch.Generator().manual_seed(1)
    a = torch.rand(200, 3, 2, 2, generator=g, dtype=torch.float64)
    b = torch.rand(200, 3, 2, 2, generator=g, dtype=torch.float64) * 1.3 + 0.1
    metric = fid_module.FrechetInceptionDistance(feature=Flatten(), normalize=True)
    metric.set_dtype(torch.float64)
    metric.update(a, real=True)
    metric.update(b, real=False)
    assert frechet_distance(a.flatten(1), b.flatten(1)) == pytest.approx(float(metric.compute()), rel=1e-6)
