"""`dean label`: a blind reading sheet of a run's answers; --import adds the reader's labels."""

from __future__ import annotations

from ..errors import DeanError
from ._args import positive


def cmd_label(args) -> None:
    """`dean label RUN`: the blind reading sheet; `--import FILE`: the reader's labels into the run's report."""
    from ..eval.reading import import_labels, make_sheet, read_labels_file

    if args.import_file:
        given = [f for f, v in (("--read", args.read), ("--all", args.all)) if v]
        if given:
            raise DeanError(f"{' and '.join(given)} shape a new sheet; --import reads the labels of one already made: "
                            "drop them.")
        figures = import_labels(args.run, read_labels_file(args.import_file))
        print(f"imported {figures['read']} labels of sheet {figures['sheet']} ({figures['unread']} of "
              f"{figures['items']} answers unread)")
        for setting, dims in figures["paired"].items():
            for dim, c in dims.items():
                print(f"  {dim}, {figures['baseline']} -> {setting}: change {c['difference']:+.3f} "
                      f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}], +{c['improved']}/-{c['worsened']} flips, "
                      f"Holm p = {c['p_adjusted']:.3g} ({c['read']} read, {c['ties']} ties, {c['unread']} unread)")
        print(f"report -> {figures['files']['report']}")
        return
    files = make_sheet(args.run, read=args.read, seed=args.seed, all_answers=args.all)
    print(f"sheet -> {files['sheet']} (open it in a browser; keys a / u / c, z to undo)")
    print(f"csv   -> {files['csv']} (the same answers, for a spreadsheet: fill the label column)")
    print(f"key   -> {files['key']} (stays with the run: never hand it to a reader)")
    print(f"then: dean label {args.run} --import labels.json")


def register(sub) -> None:
    """Add the `label` subcommand to `sub`."""
    p = sub.add_parser("label", help="blind reading sheet of a run's answers; --import adds the reader's labels "
                                     "to its report")
    p.add_argument("run", help="run folder holding answers.jsonl (from dean eval, demo or tune)")
    p.add_argument("--read", type=positive, default=None, metavar="N", help="read N questions per dimension, "
                                                                             "drawn with --seed (default: all)")
    p.add_argument("--all", action="store_true", help="every question, also those whose answers are identical in "
                                                      "every setting (gives rates, not only changes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw and of the shuffled order")
    p.add_argument("--import", dest="import_file", default=None, metavar="LABELS",
                   help="labels exported by the sheet (JSON) or its filled CSV")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no library logging below errors")
    p.set_defaults(func=cmd_label)
