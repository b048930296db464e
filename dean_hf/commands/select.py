"""`dean select`: the coupled neurons (T1 ∩ T2) \\ G of saved scores, written as a mask artifact."""

from __future__ import annotations

from pathlib import Path

from ..errors import DeanError
from ._args import check_out, fraction


def cmd_select(args) -> None:
    from ..config import DeanConfig
    from ..hub import _holds_model, fraction_text, save_artifact
    from ..io import check_writable
    from ..pipeline import mask_and_config
    from ..scoring import ImportanceScores

    check_out(args.out)
    check_writable(args.out, "--out")
    if not args.overwrite and _holds_model(Path(args.out)):
        raise DeanError(f"--out {str(args.out)!r} holds a model (config.json or weight files): the mask's files would "
                        "be added to it. Pick an empty or new folder, or pass --overwrite.")
    folder = Path(args.scores)
    names = [n for n in args.targets.split(",") if n]
    load = lambda n: ImportanceScores.load(folder / f"{n}.safetensors", lazy=True)  # noqa: E731
    targets = {n: load(n) for n in names}
    general = load(args.general) if args.general else None
    config = DeanConfig(q=args.q, p=args.p, target_datasets=names, general_dataset=args.general or None,
                        legacy=args.legacy)
    mask, config = mask_and_config(targets, general, config, general_name=args.general or None)
    if not mask.num_masked and not args.allow_empty:
        raise DeanError(f"the selection masks {fraction_text(mask)} weights at q={args.q:g}, p={args.p:g}: raise "
                        "--q (or lower --p) until the fairness and privacy top "
                        "sets overlap outside the general one, or pass --allow-empty to write an empty mask.")
    save_artifact(args.out, config, mask)
    print(f"masked {fraction_text(mask)} -> {args.out}")
    print("per layer: " + ", ".join(f"{k}: {v}" for k, v in sorted(mask.counts_per_layer().items(),
                                                                   key=lambda kv: (kv[0] is None, kv[0] or 0))))
    print("per module type: " + ", ".join(f"{k}: {v}" for k, v in sorted(mask.counts_per_kind().items())))


def register(sub) -> None:
    """Add the `select` subcommand to `sub`."""
    p = sub.add_parser("select", help="select the coupled neurons (T1 ∩ T2) \\ G and write the mask artifact")
    p.add_argument("--scores", required=True, help="folder written by dean score")
    p.add_argument("--targets", default="fairness,privacy", help="comma list of target data set names")
    p.add_argument("--general", default="general", help="general data set name ('' for none)")
    p.add_argument("--q", type=fraction, default=5e-7, help="top fraction per target set (paper: 5e-7)")
    p.add_argument("--p", type=fraction, default=5e-7, help="top fraction of the general set (paper: 5e-7)")
    p.add_argument("--legacy", action="store_true", help="reproduce the reference code's position-wise AND (a defect)")
    p.add_argument("--out", default="mask", help="output folder for the artifact")
    p.add_argument("--overwrite", action="store_true", help="allow --out to be a folder that holds a model")
    p.add_argument("--allow-empty", action="store_true", help="write the mask even if it masks no weight")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no library logging below errors")
    p.set_defaults(func=cmd_select)
