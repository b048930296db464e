"""`dean apply`: a mask applied to a model and the merged checkpoint saved with its card."""

from __future__ import annotations

from ..errors import DeanError
from ._args import check_out, load_model_and_tokenizer, model_options, same_or_inside


def cmd_apply(args) -> None:
    from ..editor import DeanEditor
    from ..hub import check_merged_target, load_artifact, render_card, resolve_artifact, save_merged
    from ..models import resolve_model_path

    check_out(args.out)
    mask_folder = resolve_artifact(args.mask)  # the mask is checked first: before minutes of loading
    load_artifact(mask_folder)
    if same_or_inside(args.out, mask_folder):
        raise DeanError(f"--out {str(args.out)!r} is the mask's folder (or inside it): the edited model would be "
                        "written over the mask and its card. Pick another folder.")
    source = resolve_model_path(args.model)
    check_merged_target(args.out, source=source, overwrite=args.overwrite)  # before minutes of loading
    model, tokenizer = load_model_and_tokenizer(args)
    editor = DeanEditor.from_pretrained(model, args.mask, check_base_model=not args.skip_base_model_check)
    config, mask = editor.dean_config, editor.masks[editor.active_adapter]
    card = render_card(config, mask, merged=True)  # rendered (and checked) before anything is written
    merged = editor.merge_and_unload()
    save_merged(merged, args.out, tokenizer=tokenizer, card=card, source=source, overwrite=args.overwrite)
    print(f"edited model ({mask.num_masked} weights zeroed) -> {args.out}")


def register(sub) -> None:
    """Add the `apply` subcommand to `sub`."""
    p = sub.add_parser("apply", help="apply a mask and save the merged checkpoint with its model card")
    model_options(p)
    p.add_argument("--mask", required=True, help="mask artifact folder or Hub repo id")
    p.add_argument("--out", required=True, help="output folder for the edited model")
    p.add_argument("--skip-base-model-check", action="store_true", help="apply even if the weights differ from the "
                                                                         "mask's base model")
    p.add_argument("--overwrite", action="store_true", help="allow --out to be the base model's folder or a folder "
                                                            "that holds a model (its files are replaced)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no library logging below errors")
    p.set_defaults(func=cmd_apply)
