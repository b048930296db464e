"""`dean demo`: score -> select -> apply -> evaluate on the embedded model and data."""

from __future__ import annotations

from ._args import fraction, positive


def cmd_demo(args) -> None:
    from ..experiments import run_demo

    files = run_demo(args.out, model_name=args.model, n=args.n, q=args.q, p=args.p, target_modules=args.target_modules,
                     max_new_tokens=args.max_new_tokens, show_progress=not args.quiet)
    print(f"run folder: {files['run']}")
    print(f"  report:   {files['markdown']} (and {files['json'].name})")
    print(f"  mask:     {files['mask']}")
    print(f"  scores:   {files['scores']}")
    print("  plots:    " + ", ".join(str(p) for p in files["plots"]))


def register(sub) -> None:
    """Add the `demo` subcommand to `sub`."""
    p = sub.add_parser("demo", help="score -> select -> apply -> evaluate on the embedded model and data")
    p.add_argument("--model", default="default", help="model (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", default=None, help="run folder (default: dean_runs/demo-TIME)")
    p.add_argument("--n", type=positive, default=32, help="samples per scoring set (embedded sets hold 36)")
    p.add_argument("--q", type=fraction, default=1e-3, help="top fraction per target set")
    p.add_argument("--p", type=fraction, default=1e-3, help="top fraction of the general set")
    p.add_argument("--target-modules", default="mlp", help="modules to edit (paper: MLP)")
    p.add_argument("--max-new-tokens", type=positive, default=64, help="tokens generated per answer")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
