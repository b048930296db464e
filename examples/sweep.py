"""Sweep q and the target modules on the embedded data to pick a setting for your model.

    python examples/sweep.py [--model default] [--n 32] [--out dean_runs/sweep]
"""

import argparse

from dean_hf.config import DeanConfig
from dean_hf.data import load_records
from dean_hf.eval.report import write_report
from dean_hf.experiments import embedded, embedded_questions, measure, rate_text, sweep
from dean_hf.models import load_model, load_tokenizer
from dean_hf.pipeline import score_datasets_cached

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="default")
parser.add_argument("--n", type=int, default=32)
parser.add_argument("--out", default="dean_runs/sweep")
args = parser.parse_args()

model, tokenizer = load_model(args.model), load_tokenizer(args.model)
config = DeanConfig(num_samples=args.n, max_length=256)
records = {k: load_records(embedded(k), n=args.n) for k in ("fairness", "privacy", "general")}
scores = score_datasets_cached(model, tokenizer, records, config, f"{args.out}/scores")
general = scores.pop("general")
questions = embedded_questions()
base = measure(model, tokenizer, questions)
rows = sweep(model, tokenizer, scores, general, questions, qs=[1e-4, 1e-3, 1e-2])
table = [["base", 0, rate_text(base["fairness"]), rate_text(base["privacy"]), base["perplexity"]]]
table += [[f"{r['modules']} q={r['q']:g}", r["masked"], rate_text(r["fairness"]) if "fairness" in r else "-",
           rate_text(r["privacy"]) if "privacy" in r else "-", r.get("perplexity", "-")] for r in rows]
files = write_report(args.out, "sweep", {"base": base, "rows": rows}, title="DEAN sweep",
                     tables=[("Sweep", ["setting", "masked", "fairness", "privacy", "perplexity"], table)])
print(f"report -> {files['markdown']}")
