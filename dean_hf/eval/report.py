"""Reports: a JSON and a Markdown file with PNG plots for every experiment."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DeanError
from ..io import atomic_write_text
from ..mask import NeuronMask


_MARK = "dean_hf report"


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def plot_mask_per_layer(mask: NeuronMask, path: Path) -> Path:
    """Bar chart of masked weights per layer, stacked by module kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..mask import layer_index, module_kind

    layers = sorted({layer_index(n) for n in mask if layer_index(n) is not None})
    kinds = sorted({module_kind(n) for n in mask})
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bottom = [0] * len(layers)
    for kind in kinds:
        counts = [sum(int(mask[n].numel()) for n in mask if layer_index(n) == layer and module_kind(n) == kind)
                  for layer in layers]
        ax.bar(layers, counts, bottom=bottom, label=kind)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_xlabel("layer")
    ax.set_ylabel("weights zeroed")
    ax.set_title(f"DEAN mask: {mask.num_masked} weights")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_awareness(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "awareness before / after") -> Path:
    """Grouped bars: awareness rate per dimension for each setting (rows: setting, dimension, rate, n, and ci95,
    the rate's 95% interval, drawn as error bars when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    dims = list(dict.fromkeys(r["dimension"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(1, len(settings))
    for i, setting in enumerate(settings):
        found = [next((r for r in rows if r["setting"] == setting and r["dimension"] == d), {}) for d in dims]
        values = [r.get("rate", math.nan) for r in found]
        # each bar's 95% interval (Wilson, from the row's "ci95"), as distances below and above the rate
        ci = [r.get("ci95") or (math.nan, math.nan) for r in found]
        yerr = [[max(0.0, v - lo) if v == v and lo == lo else 0.0 for v, (lo, _) in zip(values, ci)],
                [max(0.0, hi - v) if v == v and hi == hi else 0.0 for v, (_, hi) in zip(values, ci)]]
        ax.bar([j + i * width for j in range(len(dims))], values, width, label=setting, yerr=yerr, capsize=3,
               error_kw={"elinewidth": 1, "ecolor": "black"})
    ax.set_xticks([j + width * (len(settings) - 1) / 2 for j in range(len(dims))])
    ax.set_xticklabels([f"{d} (n={next(r['n'] for r in rows if r['dimension'] == d)})" for d in dims])
    ax.set_ylim(0, 1)
    ax.set_ylabel("awareness rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, name: str, data: Mapping[str, Any], *, title: str,
                 tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = (),
                 notes: Sequence[str] = (), plots: Sequence[Path] = ()) -> dict[str, Path]:
    """Write `name.json` (all of `data`) and `name.md` (tables, plots, notes) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    for path in (json_path, md_path):  # only dean_hf's own reports are ever replaced
        if path.exists() and _MARK not in path.read_text(encoding="utf-8", errors="replace")[:2000]:
            raise DeanError(f"{str(path)!r} exists and is not a dean_hf report: it is left as it is. Pick another "
                            "output folder.")
    data = {"written_by": _MARK, **data}
    atomic_write_text(json_path, json.dumps(data, indent=2, default=str) + "\n")
    lines = [f"<!-- {_MARK} -->", f"# {title}", ""]
    for caption, header, rows in tables:
        lines += [f"## {caption}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_fmt(x) for x in row) + " |" for row in rows]
        lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    atomic_write_text(md_path, "\n".join(lines))
    return {"json": json_path, "markdown": md_path}
