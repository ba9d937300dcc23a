"""`ardiff bench`: training and sampling speed against this machine's matmul peak."""

from __future__ import annotations

from ardiff.cli.common import output_file


def cmd_bench(args) -> int:
    from ardiff.experiments import speed_bench

    result = speed_bench.main(as_json=args.json, quick=args.quick)
    if args.out:
        from ardiff.utils.io import atomic_write_json

        atomic_write_json(args.out, result, indent=2)
    return 0


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="training/sampling speed against this machine's matmul peak",
                           description="Measure, in one run: the fp32 matmul peak, a training step, sampling, and "
                                       "per-block latency with and without the KV cache; achieved FLOP/s as a "
                                       "fraction of the peak.")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and block counts")
    bench.add_argument("--out", type=output_file(".json"), help="also write the JSON results to this file")
    bench.set_defaults(func=cmd_bench)
