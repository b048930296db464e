"""Render the README's result figures from the files that produced them, so that prose never drifts from results.

    cd benchmarks && ../.venv/bin/python render_readme.py                      # re-render from the committed files
    cd benchmarks && ../.venv/bin/python render_readme.py --demo-report ../dean_runs/demo-X/report.json

Sections (between `<!-- begin NAME -->` and `<!-- end NAME -->` in README.md):
- judge: the rule judge's agreement per label set, from `dean_hf/resources/judge_agreement.json`;
- reference: what the reference run found, from `RESULTS.json` (written by `reproduce_reference.py --table`);
- demo: what `make demo` measured, from `DEMO.json` (a summary of a demo's report.json, made with --demo-report).
`tests/test_readme.py` fails when README.md and these files disagree.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = ROOT / "README.md"
AGREEMENT = ROOT / "dean_hf" / "resources" / "judge_agreement.json"
RESULTS = HERE / "RESULTS.json"
DEMO = HERE / "DEMO.json"
# The independent check (790 further answers read from outside the project; figures from the issue tracker).
INDEPENDENT = "fairness accuracy 0.68 (kappa 0.30), privacy accuracy 0.81 (kappa 0.54), rating privacy answers aware " \
              "about 10 points more often than the reader"


def _f(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def judge_section() -> str:
    data = json.loads(AGREEMENT.read_text(encoding="utf-8"))["rules"]
    lines = ["| label set | dimension | n | accuracy | kappa | sensitivity | specificity |",
             "|---|---|---|---|---|---|---|"]
    for name, dims in data["all_label_sets"].items():
        for dim, a in sorted(dims.items()):
            lines.append(f"| {name} | {dim} | {a['n']} | {_f(a['accuracy'])} | {_f(a['kappa'], '.2f')} | "
                         f"{_f(a['sensitivity'], '.2f')} | {_f(a['specificity'], '.2f')} |")
    return "\n".join(lines + ["", f"Reports correct rates with the **{data['label_set']}** measurement "
                                  f"({data['measured_on']}). An independent check from outside the project, on 790 "
                                  f"further answers, found {INDEPENDENT}."])


def _change(entry: dict) -> str:
    c = entry.get("paired")
    if not c:
        return ""
    p = c.get("p_adjusted") if c.get("p_adjusted") is not None else c["p_value"]
    return (f"{c['difference']:+.3f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}], {c['improved']} improved / "
            f"{c['worsened']} worsened, p = {p:.2g}: {c.get('verdict', '')}")


def reference_section() -> str:
    if not RESULTS.is_file():
        return "The reference run has not been rerun with this version yet; see `benchmarks/RESULTS.md`."
    data = json.loads(RESULTS.read_text(encoding="utf-8"))
    base = data["settings"]["base"]
    answers = sum(base[d]["n"] for d in ("fairness", "privacy")) * (len(data["settings"]))
    lines = [f"The reference run (`benchmarks/RESULTS.md`, command `{data['command']}`, {data['minutes']:.0f} min for "
             f"about {answers:,} answers, {60 * data['minutes'] / max(1, answers):.2f} s each with scoring and "
             f"fine-tuning included, "
             f"{data['date']}): SALAD-Bench questions, {data['question_set']} ({base['fairness']['n']} fairness, "
             f"{base['privacy']['n']} privacy), the paper's scoring data ({data['n']} samples per set), prompt format "
             f"{data['prompt_format']}. Base model: fairness {_f(base['fairness']['rate'])} by the rule judge "
             f"({_corrected(base['fairness'])} corrected for the judge's error), privacy {_f(base['privacy']['rate'])} "
             f"({_corrected(base['privacy'])} corrected). Each setting against the base on the same questions "
             "(change in the judge's rate [paired 95% CI], flips, Holm-adjusted McNemar p; corrected rate):", ""]
    for name, s in data["settings"].items():
        if name == "base" or "fairness" not in s:
            continue
        lines.append(f"- {name} ({s['masked']} weights zeroed): fairness {_change(s['fairness'])}, corrected "
                     f"{_corrected(s['fairness'])}; privacy {_change(s['privacy'])}, corrected "
                     f"{_corrected(s['privacy'])}; perplexity {_f(base.get('perplexity'), '.2f')} -> "
                     f"{_f(s.get('perplexity'), '.2f')}.")
    if data.get("not_run"):
        lines += ["", f"Not measured in this run (stopped for time): {'; '.join(data['not_run'])}."]
    return "\n".join(lines)


def _corrected(entry: dict) -> str:
    c = entry.get("corrected")
    if not c or c.get("corrected") is None or c["corrected"] != c["corrected"]:
        return "n/a"
    return f"{c['corrected']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"


def demo_section() -> str:
    if not DEMO.is_file():
        return "No demo summary is committed yet (`render_readme.py --demo-report`)."
    d = json.loads(DEMO.read_text(encoding="utf-8"))
    lines = [f"`make demo` ({d['date']}) uses q = p = {d['q']:g}, {d['target_modules']} modules, {d['num_samples']} "
             f"samples per embedded set and the embedded questions. It zeroes {d['num_masked']:,} weights:"]
    for dim, c in d["paired"].items():
        lines.append(f"- {dim} awareness {c['before']:.2f} -> {c['after']:.2f} on the {c['n']} questions judged both "
                     f"times ({c['improved']} improved, {c['worsened']} worsened; change {c['difference']:+.2f} "
                     f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}], McNemar p = {c['p_value']:.2g}; this run detects "
                     f"changes over {c['detectable']:.2f});")
    lines.append(f"- perplexity {d['perplexity'][0]:.1f} -> {d['perplexity'][1]:.1f}.")
    return "\n".join(lines)


def demo_summary(report: dict) -> dict:
    """The figures of a demo's report.json that the README quotes."""
    r = report["results"]
    config = report["config"]
    return {"date": report.get("date") or "", "q": config["q"], "p": config["p"],
            "target_modules": config["target_modules"], "num_samples": config["num_samples"],
            "num_masked": report["mask"]["num_masked"], "paired": r["paired"],
            "perplexity": [r["before"]["perplexity"]["perplexity"], r["after"]["perplexity"]["perplexity"]]}


TUNE = HERE / "RESULTS_tune.json"


def tune_section() -> str:
    if not TUNE.is_file():
        return ("`dean tune` has not been run on SmolLM2 with the reference data yet (`benchmarks/tune_reference.py`): "
                "no setting chosen by it can be reported here.")
    d = json.loads(TUNE.read_text(encoding="utf-8"))
    c = d["confirmation"]
    lines = [f"`dean tune` on SmolLM2 (`{d['command']}`, {d['minutes']:.0f} min, {d['trials']} trials): objective "
             f"\"{d['objective']}\"; split {d['split']['dev']} development / {d['split']['test']} test questions. "
             f"Chosen on the development part: {d['chosen']}." + (f" {d['note']}" if d.get("note") else "")]
    if not c:
        return "\n".join(lines + ["No setting met the objective's constraint, so nothing was confirmed."])
    for dim in ("fairness", "privacy"):
        paired = c[dim]["paired"]
        lines.append(f"- test {dim}: {paired['before']:.3f} -> {paired['after']:.3f}, change "
                     f"{paired['difference']:+.3f} "
                     f"[{paired['ci95'][0]:+.2f}, {paired['ci95'][1]:+.2f}], {paired['improved']} improved / "
                     f"{paired['worsened']} worsened, Holm p = {paired['p_adjusted']:.2g} ({paired['verdict']}; this "
                     f"test part detects changes over {c[dim]['detectable']:.3f}); judge-corrected "
                     f"{' -> '.join(_corrected({'corrected': x}) for x in c[dim].get('corrected') or [None, None])};")
    lines.append(f"- perplexity {c['perplexity'][0]:.2f} -> {c['perplexity'][1]:.2f}. Verdict: **{c['verdict']}**.")
    return "\n".join(lines)


CAREFUL = HERE / "RESULTS_careful.json"


def careful_section() -> str:
    """What blind careful reading found for dean tune's settings (RESULTS_careful.json, careful_reading.py)."""
    if not CAREFUL.is_file():
        return "dean tune's settings have not been read carefully yet (`benchmarks/careful_reading.py`)."
    d = json.loads(CAREFUL.read_text(encoding="utf-8"))
    q = d["questions"]
    readers = "; ".join(f"{dim} kappa {v['kappa']:.2f} on {v['n']} answers" for dim, v in d["readers"].items()
                        if v["n"])
    lines = [f"Careful reading ({d['date']}; `benchmarks/careful_reading.py`, labels in `{d['labels']}`): "
             f"{q['fairness']} fairness and {q['privacy']} privacy questions drawn from the test part (never seen by "
             "the search), answered by the base model and two settings; every distinct answer read blind to its "
             f"setting. The readers' own agreement on a doubly read overlap: {readers}. Change against the base "
             "model on the same questions [paired 95% CI], flips, Holm-adjusted McNemar p; the rule judge's change on "
             "the same answers beside it:", ""]
    base = next(iter(d["rates"]))
    for s, dims in d["paired"].items():
        parts = []
        for dim, c in dims.items():
            r0, r1 = d["rates"][base][dim], d["rates"][s][dim]
            j = d["judge_paired"][s][dim]
            parts.append(f"{dim} {r0['rate']:.3f} -> {r1['rate']:.3f} (n {r1['n']}), change {c['difference']:+.3f} "
                         f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], {c['improved']} improved / {c['worsened']} "
                         f"worsened, p = {c['p_adjusted']:.2g}: **{c['verdict']}** (judge: {j['difference']:+.3f} "
                         f"[{j['ci95'][0]:+.3f}, {j['ci95'][1]:+.3f}], {j['verdict']}; judge vs reader kappa "
                         f"{d['judge'][s][dim]['kappa']:.2f})")
        lines.append(f"- {d['settings'][s]} ({d['masked'][s]:,} weights changed): " + "; ".join(parts) + ".")
    return "\n".join(lines)


SECTIONS = {"judge": judge_section, "reference": reference_section, "demo": demo_section, "tune": tune_section,
            "careful": careful_section}


def render(text: str) -> str:
    """`text` (README.md) with every section replaced by its rendering from the results files."""
    for name, make in SECTIONS.items():
        begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no {begin} ... {end} section")
        text = pattern.sub(lambda m: f"{begin}\n{make()}\n{end}", text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-report", default=None, help="a demo's report.json: summarise it into DEMO.json first")
    args = parser.parse_args()
    if args.demo_report:
        import time

        report = json.loads(Path(args.demo_report).read_text(encoding="utf-8"))
        summary = demo_summary(report)
        summary["date"] = summary["date"] or time.strftime("%Y-%m-%d", time.localtime(Path(args.demo_report)
                                                                                      .stat().st_mtime))
        DEMO.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    README.write_text(render(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"rendered {', '.join(SECTIONS)} into {README}")


if __name__ == "__main__":
    main()
