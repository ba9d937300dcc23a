"""`ardiff convert-official|average|export`: write model directories (from a released checkpoint, an
average of models, a training checkpoint)."""

from __future__ import annotations

from ardiff.cli.common import existing_file, output_dir, positive_int


def cmd_convert_official(args) -> int:
    from ardiff.models.official import convert_official

    out = convert_official(args.checkpoint, args.out_dir, allow_pickle=args.allow_pickle, use_ema=args.ema)
    print(f"wrote {out} (config.json, model.safetensors, official_args.json)")
    return 0


def cmd_average(args) -> int:
    from ardiff.models import ACDiT
    from ardiff.models.checkpoint import average_pretrained
    from ardiff.models.resolve import resolve_model_dir

    out = average_pretrained(ACDiT, [resolve_model_dir(m) for m in args.models], args.out)
    print(f"wrote {out}: the average of {len(args.models)} models' weights")
    return 0


def cmd_export(args) -> int:
    from ardiff.models.checkpoint import load_extras
    from ardiff.train.export import export_checkpoint

    out = export_checkpoint(args.source, args.out, weights=args.weights, step=args.step, dtype=args.dtype)
    print(f"wrote {out}: the {'EMA' if args.weights == 'ema' else 'raw'} weights of "
          f"{load_extras(out)['exported_from']['checkpoint']} as {args.dtype}")
    return 0


def add_parser(sub) -> None:
    conv = sub.add_parser("convert-official", help="convert a released ACDiT checkpoint to an ardiff model dir",
                          description="Convert ACDiT-{XL,H}-{img,vid}.pt from the official release into an ardiff "
                                      "model directory (safetensors + JSON). The release is a pickle: it is read "
                                      "with torch.load(weights_only=True) and an allow-list, and only with "
                                      "--allow-pickle.")
    conv.add_argument("checkpoint", type=existing_file, help="ACDiT-{XL,H}-{img,vid}.pt")
    conv.add_argument("out_dir", type=output_dir, help="model directory to write")
    conv.add_argument("--allow-pickle", action="store_true",
                      help="required: the release is a pickle; it is loaded with weights_only=True and an allow-list")
    conv.add_argument("--ema", action="store_true", help="take the EMA weights when the checkpoint has them")
    conv.set_defaults(func=cmd_convert_official)

    avg = sub.add_parser("average", help="average the weights of models of one architecture (a model soup)",
                         description="Write the uniform average of the weights of two or more model directories "
                                     "(or shipped names) of one architecture, e.g. the EMA weights of consecutive "
                                     "training stages. The first model's recorded sampling and data go with it.")
    avg.add_argument("models", nargs="+", help="model directories or shipped model names, two or more")
    avg.add_argument("--out", required=True, type=output_dir, help="model directory to write")
    avg.set_defaults(func=cmd_average)

    exp = sub.add_parser("export", help="a model directory from a training checkpoint (EMA or raw weights, fp16)",
                         description="Write a model directory (config.json + model.safetensors, with the run's "
                                     "recorded sampling and data) from a checkpoint of `ardiff train`: the newest "
                                     "or --step N, its EMA weights or the raw ones, stored as float32, float16 or "
                                     "bfloat16 (half the bytes; loaded into float32 parameters). `ardiff train` "
                                     "itself exports the EMA weights of its last step.")
    exp.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                     help="a training run directory (train.out_dir) or one of its checkpoints/step_* directories")
    exp.add_argument("--out", required=True, type=output_dir, help="model directory to write")
    exp.add_argument("--weights", choices=("ema", "model"), default="ema",
                     help="ema: the moving average (default); model: the weights the optimizer last wrote")
    exp.add_argument("--step", type=positive_int, help="that step's checkpoint (default: the newest)")
    exp.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                     help="storage precision of the weights (default float32)")
    exp.set_defaults(func=cmd_export)
