"""The ``attok`` command: helpers around LLaMA-Factory for AttTok (training itself is ``llamafactory-cli train``)."""

from __future__ import annotations

import argparse
import sys

from .testing import FAMILIES


def _tiny_model(ns: argparse.Namespace) -> None:
    from .testing import build_tiny_model

    path = build_tiny_model(ns.out, ns.family, tied=ns.tied, seed=ns.seed, spare_rows=ns.spare_rows)
    print(f"tiny {ns.family} model written to {path}")


def _sample_data(ns: argparse.Namespace) -> None:
    from .sample_data import build_retina_sample

    written = build_retina_sample(ns.out, per_class_train=ns.per_class_train, per_class_test=ns.per_class_test,
                                  image_size=ns.image_size)
    print(f"datasets {', '.join(written)} written to {ns.out} (dataset_info.json merged)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attok", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-model", help="build a tiny offline Qwen2-VL / Qwen2.5-VL (random weights)")
    tiny.add_argument("out")
    tiny.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    tiny.add_argument("--tied", action="store_true", help="tie the output head to the input embedding")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--spare-rows", type=int, default=0, help="unused embedding rows beyond the tokenizer")
    tiny.set_defaults(func=_tiny_model)
    sample = sub.add_parser("sample-data", help="write the RetinaMNIST sample datasets (AttTok and vanilla)")
    sample.add_argument("out")
    sample.add_argument("--per-class-train", type=int, default=40)
    sample.add_argument("--per-class-test", type=int, default=20)
    sample.add_argument("--image-size", type=int, default=56)
    sample.set_defaults(func=_sample_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    ns.func(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
