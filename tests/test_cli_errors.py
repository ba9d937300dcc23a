"""The command line as a user meets it: every bad input ends in one line that names the
thing (and the fix), a non-zero exit status, no traceback, and nothing written."""

import json
import time

import pytest

from ardiff import ACDiT, ACDiTConfig
from ardiff.cli import main
from ardiff.data.fashion_mnist import DEBIAN_DIR
from ardiff.models.checkpoint import save_pretrained

HAVE_FMNIST = (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Model directories (good and broken) and bad input files, shared by the cases."""
    root = tmp_path_factory.mktemp("inputs")
    model = ACDiT(ACDiTConfig.preset("tiny"))
    good = save_pretrained(model, root / "model")
    rows = save_pretrained(ACDiT(ACDiTConfig.preset("tiny", block_layout="raster", block_size=4)), root / "rows")
    bad_json = save_pretrained(model, root / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    wrong = save_pretrained(model, root / "wrong_shape")
    config = json.loads((wrong / "config.json").read_text())
    config["hidden_size"] = 32  # the weights are 64 wide
    config["num_heads"] = 1
    (wrong / "config.json").write_text(json.dumps(config))
    garbage = save_pretrained(model, root / "garbage_weights")
    (garbage / "model.safetensors").write_bytes(b"\x00" * 64)
    (root / "list.yaml").write_text("- model\n- train\n")
    (root / "broken.yaml").write_text("model: [unclosed\n")
    (root / "text.pt").write_text("this is not a checkpoint\n")
    (root / "empty.txt").write_text("\n\n")
    (root / "five.txt").write_text("A sneaker.\nIt moves.\nIt stops.\nIt turns.\nIt rests.\n")
    (root / "a_file").write_text("x")
    (root / "existing_dir").mkdir()
    import numpy as np

    from ardiff.eval.sample_files import save_sample_npz

    save_sample_npz(root / "grey32.npz", np.zeros((4, 32, 32, 1), np.uint8), np.arange(4))
    red = np.zeros((4, 32, 32, 3), np.uint8)
    red[..., 0] = 255  # colour: grey stored as RGB (3 equal channels) would be read as grey
    save_sample_npz(root / "rgb32.npz", red)
    save_sample_npz(root / "grey16.npz", np.zeros((4, 16, 16, 1), np.uint8))
    (root / "junk.npz").write_bytes(b"not a zip archive")
    return {"model": str(good), "rows": str(rows), "bad_json": str(bad_json), "wrong_shape": str(wrong),
            "garbage": str(garbage), "root": root}


# (argv with {model}/{root}/{out} placeholders, a fragment the error line must contain)
CASES = [
    # sample
    ("sample {model} --num 0 --out {out}/s.png", "--num: 0 must be a whole number >= 1"),
    ("sample {model} --num -1 --out {out}/s.png", "--num: -1 must be a whole number >= 1"),
    ("sample {model} --num many --out {out}/s.png", "'many' is not a whole number"),
    ("sample {model} --cfg nan --out {out}/s.png", "--cfg: nan is not a finite number"),
    ("sample {model} --cfg inf --out {out}/s.png", "--cfg: inf is not a finite number"),
    ("sample {model} --cfg -2 --out {out}/s.png", "a guidance scale is >= 0"),
    ("sample {model} --steps 0 --out {out}/s.png", "--steps: 0 must be a whole number >= 1"),
    ("sample {model} --seed -3 --out {out}/s.png", "--seed: -3 must be a whole number >= 0"),
    ("sample {model} --scale 0 --out {out}/s.png", "--scale: 0 must be a whole number >= 1"),
    ("sample {model} --sampler euler --out {out}/s.png", "invalid choice: 'euler'"),
    ("sample {model} --out {out}/x.jpgz", "must end in .png or .gif or .mp4"),
    ("sample {model} --out {out}/", "is a directory; give a file name"),
    ("sample {model} --out {root}/existing_dir", "is a directory; give a file name"),
    ("sample {model} --out {root}/a_file/s.png", "is a file, not a directory"),
    ("sample {model} --out {out}/s.gif", "this model makes images; give a .png file"),
    ("sample {model} --classes 12 --out {out}/s.png", "--classes [12] out of range"),
    ("sample {model} --classes a,b --out {out}/s.png", "--classes must be comma-separated class ids"),
    ("sample {model} --guidance-interval 0.7 0.2 --out {out}/s.png", "--guidance-interval 0.7 0.2: give LOW HIGH"),
    ("eval {model} --guidance-interval 0 2 --num 10 --out {out}/m.json", "--guidance-interval 0 2: give LOW HIGH"),
    ("eval {root}/grey32.npz --reference fmnist-test --guidance-interval 0.1 0.5 --out {out}/m.json",
     "--guide-scale and --vae apply when sampling a model"),
    ("sample-npz {model} --guidance-interval 0.5 0.5 --num 10 --out {out}/s.npz",
     "--guidance-interval 0.5 0.5: give LOW HIGH"),
    ("sample {model} --guide-model {model} --out {out}/s.png", "--guide-model needs --guide-scale W with W > 1"),
    ("sample {model} --guide-model {model} --guide-scale 1 --out {out}/s.png", "--guide-scale W with W > 1"),
    ("sample {model} --guide-scale 2 --out {out}/s.png", "--guide-scale W needs --guide-model"),
    ("eval {model} --guide-model {root}/nowhere --guide-scale 2 --num 10 --out {out}/m.json", "nowhere"),
    ("eval {model} --guide-model {wrong_shape} --guide-scale 2 --num 10 --out {out}/m.json",
     "does not match the architecture"),
    ("sample {model} --guide-model {rows} --guide-scale 2 --out {out}/s.png",
     "they differ in block_layout: 'tiles' vs 'raster'"),
    ("eval {root}/grey32.npz --reference fmnist-test --guide-model {model} --guide-scale 2 --out {out}/m.json",
     "already holds samples"),
    ("eval {model} --reference fmnist-test --history-scale 1.5 --out {out}/m.json",
     "history guidance (--history-scale) needs a video model whose blocks are whole frames"),
    ("sample {model} --history-scale 0.5 --out {out}/s.png", "a history guidance scale is >= 1"),
    ("eval {model} --history-scale 2 --num 10 --out {out}/m.json",
     "history guidance (--history-scale) needs a video model whose blocks are whole frames"),
    ("sample-npz {model} --history-scale 2 --num 10 --out {out}/s.npz", "use --history-scale=1 for this model"),
    ("sample {root}/nothing --out {out}/s.png", "is neither a model directory"),
    ("sample {bad_json} --out {out}/s.png", "config.json is not valid JSON"),
    ("sample {wrong_shape} --out {out}/s.png", "(64,) in the file, (32,) by the config"),
    ("sample {garbage} --out {out}/s.png", "is not a readable safetensors file"),
    ("sample {model} --no-such-flag", "unrecognized arguments: --no-such-flag"),
    # eval
    ("eval {model} --num 0", "--num: 0 must be a whole number >= 1"),
    ("eval {model} --cfg nan", "--cfg: nan is not a finite number"),
    ("eval {model} --out {out}/metrics.txt", "must end in .json"),
    ("eval {root}/nothing", "is neither a model directory"),
    ("eval {model} --classifier {root}/missing.safetensors", "no such file"),
    ("eval {model} --num 2 --out {out}/m.json", "no feature network for 3-channel samples"),
    # eval against a reference
    ("eval {root}/missing.npz --reference fmnist-test", "missing.npz: no such sample file"),
    ("eval {model} --reference {root}/nothing", "no such folder or .npz file"),
    ("eval {model} --reference {root}/five.txt", "a reference file is an .npz"),
    ("eval {model} --reference fmnist-test --features resnet", "use fmnist, inception:PATH or i3d:PATH"),
    ("eval {model} --reference fmnist-test --features inception", "inception needs its local weight file"),
    ("eval {model} --reference fmnist-test --features inception:{root}/no.pth", "no.pth: no such file"),
    ("eval {model} --reference fmnist-test --save-stats {out}/s.txt", "must end in .npz"),
    ("eval {model} --features fmnist", "--features goes with --reference"),
    ("eval {root}/grey32.npz", "holds samples: give the reference"),
    ("eval {root}/grey32.npz --reference {root}/rgb32.npz --out {out}/e.json", "fmnist network reads grey images"),
    ("eval {root}/grey32.npz --reference {root}/grey16.npz --out {out}/e.json", "at least 28x28"),
    ("eval {root}/grey32.npz --reference {root}/junk.npz --out {out}/e.json", "is not a readable .npz file"),
    ("eval {root}/junk.npz --reference {root}/grey32.npz --out {out}/e.json", "is not a readable .npz file"),
    ("eval {root}/grey32.npz --reference {root}/grey32.npz --cfg 2", "already holds samples"),
    ("eval {model} --num 2 --reference {root}/grey32.npz --out {out}/e.json", "fmnist network reads grey images"),
    # sample-npz
    ("sample-npz {model} --num 0 --out {out}/s.npz", "--num/-n: 0 must be a whole number >= 1"),
    ("sample-npz {model} --num 4 --out {out}/s.png", "must end in .npz"),
    ("sample-npz {model} --out {out}/s.npz", "the following arguments are required: --num/-n"),
    ("sample-npz {model} --num 4 --out {out}/s.npz --vae {root}/nothing", "no such directory"),
    ("sample-npz {model} --num 4 --out {out}/s.npz --batch-size 0", "--batch-size: 0 must be a whole number >= 1"),
    ("sample-npz {root}/nothing --num 4 --out {out}/s.npz", "is neither a model directory"),
    ("sample-npz {model} --num 4 --out {root}/grey32.npz", "already exists and holds other samples"),
    # represent
    ("represent {model} --data nowhere --mode linear", "give fmnist or a folder of class subfolders"),
    ("represent {model} --data fmnist --mode probe", "invalid choice: 'probe'"),
    ("represent {model} --data fmnist --mode linear --out {out}/r.txt", "must end in .json"),
    ("represent {model} --data fmnist --mode finetune --epochs 0", "--epochs: 0 must be a whole number >= 1"),
    ("represent {model} --data fmnist --mode linear --out {out}/r.json", "needs a grey model"),
    # train
    ("train {root}/list.yaml --out-dir {out}/run", "holds a YAML list; a run config is a mapping"),
    ("train {root}/broken.yaml --out-dir {out}/run", "is not valid YAML"),
    ("train no-such-config --out-dir {out}/run", "run config no-such-config not found"),
    ("train fmnist --out-dir {out}/run --set train.steps=0", "train.steps=0 must be > 0"),
    ("train fmnist --out-dir {out}/run --set nosection.x=1", "unknown section 'nosection'"),
    ("train fmnist --out-dir {out}/run --set train.lr=fast", "train.lr"),
    ("train fmnist --out-dir {out}/run --max-steps 0", "--max-steps: 0 must be a whole number >= 1"),
    ("train fmnist --out-dir {root}/a_file", "is a file; give a directory"),
    # convert-official
    ("convert-official {root}/text.pt {out}/conv --allow-pickle", "is not a readable torch checkpoint"),
    ("convert-official {root}/text.pt {out}/conv", "--allow-pickle"),
    ("convert-official {root}/missing.pt {out}/conv --allow-pickle", "missing.pt: no such file"),
    # acdc
    ("acdc story --t-prime 0 --out {out}/a", "t' is a noise level in (0, 1]"),
    ("acdc story --t-prime 1.5 --out {out}/a", "t' is a noise level in (0, 1]"),
    ("acdc story --arm magic --out {out}/a", "use builtin, acdit:DIR, emu3:DIR or janus:DIR"),
    ("acdc story --arm acdit:{root}/nothing --out {out}/a", "does not exist"),
    ("acdc story --corrector sd --out {out}/a", "needs a path: sd:PATH"),
    ("acdc story --memory openai:gpt --out {out}/a", "use openai:MODEL@BASE_URL"),
    ("acdc story --memory telepathy --out {out}/a", "use rule, none, smollm2"),
    ("acdc story --prompts {root}/missing.txt --out {out}/a", "missing.txt: no such file"),
    ("acdc story --prompts {root}/empty.txt --out {out}/a", "holds no prompt"),
    ("acdc story --mask 1:{root}/missing.png --out {out}/a", "missing.png does not exist"),
    ("acdc story --mask one:{root}/a_file --out {out}/a", "use CHUNK_INDEX:MASK.png"),
    ("acdc story --cfg nan --out {out}/a", "--cfg: nan is not a finite number"),
    ("acdc story --out {root}/a_file", "is a file; give a directory"),
    ("acdc story --prompts {root}/five.txt --arm-steps 1 --steps 2 --out {out}/a", "--window"),
    ("acdc video --num-frames 0 --out {out}/a", "--num-frames: 0 must be a whole number >= 1"),
    ("acdc video --num-frames 30 --corrected-frames 16 --out {out}/a", "must be a multiple of --corrected-frames 16"),
    ("acdc story --memory-prompt {root}/empty.txt --memory smollm2 --out {out}/a", "must contain the {story} field"),
    ("acdc make-stories --prompt-file {root}/empty.txt --out {out}/s.jsonl", "must contain the {examples} field"),
    ("acdc benchmark --settings nope --out {out}/b", "unknown benchmark setting 'nope'"),
    ("acdc benchmark --num-stories 0 --out {out}/b", "--num-stories: 0 must be a whole number >= 1"),
    ("acdc benchmark --arm {root}/nothing --settings arm --out {out}/b", "is neither a model directory"),
    ("acdc benchmark --video-arm {root}/nothing --settings video_arm --out {out}/b", "is neither a model directory"),
    ("acdc benchmark --video-corrector-cfg -1 --out {out}/b", "a guidance scale is >= 0"),
    ("acdc benchmark --corrector-cfg x --out {out}/b", "'x' is not a number"),
    ("acdc make-stories --num 0 --out {out}/s.jsonl", "--num: 0 must be a whole number >= 1"),
    # loss-bands
    ("loss-bands {model} --num 2", "does not record the data it was trained on"),
    ("loss-bands fmnist --bands 5000", "bands=5000: give 1 to 1000"),
    ("loss-bands fmnist --num 0", "--num: 0 must be a whole number >= 1"),
    ("loss-bands {root}/nothing", "is neither a model directory"),
    ("loss-bands fmnist --data-root {root}/nothing", "no such directory"),
    ("loss-bands fmnist --out {out}/l.txt", "must end in .json"),
    # average
    ("average {model} --out {out}/a", "needs at least two model directories"),
    ("average {model} story-arm --out {out}/a", "describes another architecture"),
    ("average {model} {root}/nothing --out {out}/a", "is neither a model directory"),
    ("average {model} {model} --out {model}", "is one of the models to average"),
    ("average {model} {model}", "the following arguments are required: --out"),
    # world, demo, analyze, bench
    ("world render --num 0 --out {out}/w", "--num: 0 must be a whole number >= 1"),
    ("world train-reader --lr 0 --out {out}/w", "--lr: 0 must be > 0"),
    ("world score-corrector --num 0", "--num: 0 must be a whole number >= 1"),
    ("world score-corrector --cfg nan", "--cfg: nan is not a finite number"),
    ("world score-corrector {model} --num 2", "is not text-conditional"),
    ("world score-corrector story-arm --num 2", "scores a single-frame model"),
    ("demo --num-eval 0 --out {out}/d", "--num-eval: 0 must be a whole number >= 1"),
    ("demo --num-eval 5 --out {out}/d", "at least 10 images"),
    ("demo --cfg nan --out {out}/d", "--cfg: nan is not a finite number"),
    ("analyze block-size --ar-lengths 0,1 --out {out}/an", "every length must be >= 1"),
    ("analyze speed --out {out}/an", "invalid choice: 'speed'"),
    ("bench --out {out}/bench.txt", "must end in .json"),
]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("command, fragment", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line(files, tmp_path, capsys, command, fragment):
    if command.startswith(("train fmnist", "demo --num-eval 5", "loss-bands fmnist --bands")) and not HAVE_FMNIST:
        pytest.skip("needs the Debian package dataset-fashion-mnist")
    out = tmp_path / "written"
    argv = command.format(out=out, **files).split()
    code, err = _run(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("ardiff") and ": error: " in lines[0], lines[0]
    assert fragment in lines[0], lines[0]
    assert not out.exists(), f"{command} wrote {sorted(p.name for p in out.rglob('*'))}"


def test_enough_bad_inputs():
    assert len(CASES) >= 40
    assert {c.split()[0] for c, _ in CASES} >= {"sample", "eval", "train", "convert-official", "acdc", "world",
                                                 "demo", "analyze", "bench"}


def test_debug_shows_the_traceback(files, tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "sample", str(tmp_path / "nothing")])


def test_unexpected_errors_keep_their_traceback(monkeypatch, files, tmp_path):
    import ardiff.cli.sample as cli_sample

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_sample, "cmd_sample", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["sample", files["model"], "--out", str(tmp_path / "s.png")])


def test_help_is_fast():
    import subprocess
    import sys

    for argv in (["--help"], ["sample", "--help"], ["acdc", "benchmark", "--help"], ["world", "--help"]):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ardiff.cli", *argv], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        assert done.returncode == 0 and "usage: ardiff" in done.stdout
        assert seconds < 2.0, f"ardiff {' '.join(argv)} took {seconds:.1f} s"
    imported = subprocess.run([sys.executable, "-c", "import sys, ardiff.cli; ardiff.cli.build_parser(); "
                                                     "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert imported.stdout.strip() == "False"  # the parser is built without importing torch


def test_help_shows_defaults_and_descriptions(capsys):
    for argv, expected in ((["sample", "--help"], "(default: 8)"), (["sample", "--help"], "(default: 0)"),
                           (["acdc", "benchmark", "--help"], "about 2 hours"),
                           (["acdc", "benchmark", "--help"], "acdc2_rule"),
                           (["world", "--help"], "synthetic world")):
        with pytest.raises(SystemExit):
            main(argv)
        assert expected in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(not HAVE_FMNIST, reason="needs the Debian package dataset-fashion-mnist")
def test_resume_of_a_finished_run_and_of_a_damaged_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["train", "fmnist", "--out-dir", str(run), "--no-progress", "--set", "model.depth=1",
              "--set", "model.hidden_size=64", "--set", "model.num_heads=1", "--set", "train.batch_size=4",
              "--set", "train.tensorboard=false", "--set", "sample.num_images=0", "--set", "train.checkpoint_every=2"]
    assert main([*common, "--set", "train.steps=4"]) == 0
    capsys.readouterr()
    model_file = run / "model" / "model.safetensors"
    before = (model_file.read_bytes(), sorted(p.name for p in run.rglob("*")))
    code, err = _run([*common, "--set", "train.steps=4", "--resume"], capsys)
    assert code == 2 and "already finished at step 4" in err and "--set train.steps=N --resume" in err
    assert (model_file.read_bytes(), sorted(p.name for p in run.rglob("*"))) == before  # nothing changed

    newest = run / "checkpoints" / "step_00000004"
    (newest / "ema.safetensors").write_bytes(b"\x00" * 10)
    code, err = _run([*common, "--set", "train.steps=6", "--resume"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "the newest checkpoint is damaged" in err and str(run / "checkpoints" / "step_00000002") in err
