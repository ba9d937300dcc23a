"""`ardiff train`: train an ACDiT from a run config."""

from __future__ import annotations

from ardiff.cli.common import CommandError, output_dir, positive_int


def cmd_train(args) -> int:
    from ardiff.train import load_run_config

    overrides = list(args.set or [])
    if args.out_dir:
        overrides.append(f"train.out_dir={args.out_dir}")
    return _run(load_run_config(args.config, overrides), args)


def cmd_distill(args) -> int:
    from ardiff.train import load_run_config

    overrides = [f"distill.teacher={args.teacher}", *(args.set or [])]
    if args.out_dir:
        overrides.append(f"train.out_dir={args.out_dir}")
    return _run(load_run_config(args.config, overrides), args)


def _run(run, args) -> int:
    from ardiff.train import make_trainer

    trainer = make_trainer(run, resume=args.resume, device=args.device, progress=not args.no_progress)
    if args.resume and trainer.step >= run.train.steps:
        # A run killed after its last checkpoint but before its export finishes here.
        if trainer.ensure_exported():  # every rank calls it (the EMA gather is collective under FSDP)
            if trainer.is_main:
                print(f"the run in {trainer.out} had finished at step {trainer.step} without a complete model: "
                      f"exported it from the last checkpoint to {trainer.model_dir}")
            return 0
        raise CommandError(f"the run in {trainer.out} already finished at step {trainer.step} (model in "
                           f"{trainer.model_dir}); nothing was changed. To train on, raise the step count: "
                           f"--set train.steps=N --resume with N > {trainer.step}")
    last = trainer.fit(max_steps=args.max_steps)
    if trainer.is_main:
        done = trainer.step == run.train.steps
        loss = f"loss {last['loss']:.4f}" if "loss" in last else "no step logged"
        print(f"{'finished' if done else 'stopped'} at step {trainer.step}: {loss}; "
              f"checkpoints in {trainer.ckpt_root}" + (f"; model in {trainer.out / 'model'}" if done else ""))
    return 0


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="train an ACDiT from a run config (works under torchrun)",
                           description="Train from a YAML run config (a path or a name in configs/, e.g. fmnist). "
                                       "Checkpoints are written atomically; --resume continues exactly.\n"
                                       "Multi-GPU: torchrun --nproc_per_node N -m ardiff.cli train CONFIG.")
    train.add_argument("config", help="YAML run config path or built-in name (fmnist, moving-fmnist, "
                                      "imagenet256-B, ...)")
    _add_run_flags(train)
    train.set_defaults(func=cmd_train)

    distill = sub.add_parser("distill", help="distil a model into a few-step student (a training run)",
                             description="Distil TEACHER into a student that samples a block in 1-4 steps with its "
                                         "guidance built in: the teacher's ODE trajectories (drawn once into "
                                         "RUN/trajectories), then a training run from the teacher's weights with "
                                         "all of `ardiff train`'s machinery (--resume, checkpoints, torchrun). With "
                                         "distill.method dmd (configs dmd-fmnist, sf-moving-fmnist-16): Self-Forcing, "
                                         "the student's own rollouts pulled towards a real score by distribution "
                                         "matching against a fake score trained beside it. The student records its "
                                         "sampler: `ardiff sample RUN/model` needs no flags.")
    distill.add_argument("teacher", help="the model to distil: a shipped name (fmnist, moving-fmnist) or a model "
                                         "directory")
    distill.add_argument("--config", required=True, help="YAML distill config (a path or a name in configs/, e.g. "
                                                         "distill-fmnist, dmd-fmnist)")
    _add_run_flags(distill)
    distill.set_defaults(func=cmd_distill)


def _add_run_flags(parser) -> None:
    """The flags every training run takes (`ardiff train`, `ardiff distill`)."""
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint")
    parser.add_argument("--out-dir", type=output_dir, help="the run directory: shortcut for --set train.out_dir=DIR")
    parser.add_argument("--max-steps", type=positive_int, help="stop after this many steps of this invocation")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
