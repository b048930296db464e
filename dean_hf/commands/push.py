"""`dean push`: a mask artifact or an edited checkpoint pushed to the Hub in one commit."""

from __future__ import annotations

from pathlib import Path

from ..errors import DeanError


def cmd_push(args) -> None:
    from ..hub import load_artifact, push_artifact, upload

    if bool(args.mask) == bool(args.merged):
        raise DeanError("pass exactly one of --mask DIR (the mask artifact) or --merged DIR (an edited checkpoint).")
    if args.mask:
        config, mask = load_artifact(args.mask)
        url = push_artifact(args.repo, config, mask, private=args.private, token=args.token)
    else:
        folder = Path(args.merged)
        if not (folder / "config.json").is_file():
            raise DeanError(f"{str(folder)!r} is not a saved model folder (no config.json): make one with dean apply.")
        url = upload(folder, args.repo, commit_message="Upload DEAN-edited model", private=args.private,
                     token=args.token)
    print(f"pushed -> {url}")


def register(sub) -> None:
    """Add the `push` subcommand to `sub`."""
    p = sub.add_parser("push", help="push a mask artifact or an edited checkpoint to the Hub (one commit)")
    p.add_argument("--mask", help="mask artifact folder")
    p.add_argument("--merged", help="edited checkpoint folder (from dean apply)")
    p.add_argument("--repo", required=True, help="Hub repo id, user/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no library logging below errors")
    p.set_defaults(func=cmd_push)
