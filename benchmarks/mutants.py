"""Mutation testing with mutmut 3, one module at a time, each against its own fast test files.

    python benchmarks/mutants.py                      # every module below, all mutants
    python benchmarks/mutants.py io expression        # some modules
    python benchmarks/mutants.py stats --sample 40 --seed 0   # a seeded sample of one module's mutants
    python benchmarks/mutants.py io --jobs 2          # mutmut's --max-children

mutmut reads one [tool.mutmut] table per folder, so each module runs in its own scratch folder
(dean_runs/mutants/<module>/) holding a copy of dean_hf, the module's test files and a pyproject.toml that
mutates only that module and selects only those tests. Results stay there between runs (mutmut reruns only
what changed); each run ends with the module's score (killed / total) and its surviving mutants, which
`mutmut show NAME` (run inside that folder) prints as a diff. Scores are recorded in benchmarks/MUTANTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from fnmatch import fnmatch
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# module -> (source file, its fast test files). Slow model-level tests stay out: they cost minutes per mutant.
MODULES = {
    "stats": ("dean_hf/eval/stats.py", ["tests/test_stats.py", "tests/test_bite_stats.py"]),
    "selection": ("dean_hf/selection.py", ["tests/test_selection.py", "tests/test_variants.py",
                                           "tests/test_bite_selection.py"]),
    "tune": ("dean_hf/experiments/tune.py", [
        "tests/test_bite_tune.py", "tests/test_tune.py::test_split_is_disjoint_reproducible_and_stratified",
        "tests/test_tune.py::test_objective_is_the_smaller_gain_within_the_perplexity_budget",
        "tests/test_tune.py::test_a_bad_grid_is_refused_before_any_work"]),
    "plan": ("dean_hf/plan.py", ["tests/test_bite_plan.py"]),
    "io": ("dean_hf/io.py", ["tests/test_bite_io.py"]),
    "mask": ("dean_hf/mask.py", ["tests/test_mask.py", "tests/test_bite_mask.py"]),
    "scorers": ("dean_hf/scoring/scorers.py", ["tests/test_fused_kernel.py", "tests/test_scoring.py"]),
    "expression": ("dean_hf/expression.py", [
        "tests/test_bite_expression.py", "tests/test_variants.py::test_expression_precedence_by_hand",
        "tests/test_variants.py::test_expression_errors_name_the_problem_and_the_position",
        "tests/test_variants.py::test_expression_fractions_and_score_sets_are_checked"]),
}
# Where only part of a module is in scope: its functions (mutmut's mangled names, fnmatch patterns). tune: the
# split and the objective (the search and the report need a model per mutant); plan: the arithmetic (the
# placement follows accelerate's infer_auto_device_map and is tested there); scorers: SNIP, with the choice between
# the fused kernel and the products (the kernel itself: benchmarks/kernel_mutants.py).
IN_SCOPE = {
    "tune": ["x_split_questions__*", "xǁObjectiveǁ*", "x_choose__*", "xǁTuneSpaceǁsettings__*"],
    "plan": ["x_estimate_memory__*", "x__module_transient__*", "x_layers_that_fit__*", "x__layers_per_pass__*"],
    "scorers": ["x_check_fused_kernel__*", "x__fp32_product__*", "xǁSnipScorerǁ*"],
}
# mutmut 3 exit codes of a mutant (mutmut/__main__.py: status_by_exit_code)
KILLED = {1, 3, 37}  # a test failed, a test errored, the type checker caught it
SURVIVED = {0}  # the tests passed
NO_TESTS = {5, 33}  # no selected test calls the mutated function


def prepare(name: str) -> Path:
    """The scratch folder of `name`: dean_hf and its tests copied, a pyproject.toml for this module alone."""
    source, tests = MODULES[name]
    work = ROOT / "dean_runs" / "mutants" / name
    work.mkdir(parents=True, exist_ok=True)
    for folder in ("dean_hf", "tests"):
        shutil.rmtree(work / folder, ignore_errors=True)
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    if (ROOT / "model_cards").is_dir():
        shutil.rmtree(work / "model_cards", ignore_errors=True)
        shutil.copytree(ROOT / "model_cards", work / "model_cards")
    args = ", ".join(json.dumps(t) for t in tests)
    (work / "pyproject.toml").write_text(f"""[tool.mutmut]
source_paths = ["dean_hf"]
only_mutate = ["dean_hf/{source[len('dean_hf/'):]}"]
pytest_add_cli_args_test_selection = [{args}]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
also_copy = ["model_cards"]
process_isolation = "forkserver"

[tool.pytest.ini_options]
testpaths = ["tests"]
filterwarnings = ["ignore::DeprecationWarning", "ignore::FutureWarning"]
markers = ["slow: needs the SmolLM2 GGUF"]
""")
    return work


def mutmut(work: Path, *args: str) -> int:
    exe = Path(sys.executable).with_name("mutmut")
    return subprocess.call([str(exe), *args], cwd=work)


def results(work: Path, source: str) -> dict[str, int | None]:
    meta = work / "mutants" / (source + ".meta")
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"some of {list(MODULES)} (default: all)")
    parser.add_argument("--sample", type=int, default=0, help="run a seeded sample of this many mutants (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (mutmut --max-children)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown modules {unknown}: expected some of {list(MODULES)}")
    summary = {}
    for name in args.modules or list(MODULES):
        source = MODULES[name][0]
        work = prepare(name)
        module = source[:-3].replace("/", ".")
        names = [f"{module}.{pattern}" for pattern in IN_SCOPE.get(name, [])]
        if args.sample:
            # Generate the mutants (and the test statistics) without running any: a pattern that matches none.
            mutmut(work, "run", "--max-children", str(args.jobs), "__no_mutant_matches_this__")
            every = sorted(k for k in results(work, source) if not names or any(fnmatch(k, n) for n in names))
            names = sorted(random.Random(args.seed).sample(every, min(args.sample, len(every))))
        mutmut(work, "run", "--max-children", str(args.jobs), *names)
        codes = results(work, source)
        ran = {k: v for k, v in codes.items() if v is not None and (not names or any(fnmatch(k, n) for n in names))}
        killed = sorted(k for k, v in ran.items() if v in KILLED)
        survived = sorted(k for k, v in ran.items() if v in SURVIVED)
        untested = sorted(k for k, v in ran.items() if v in NO_TESTS)
        other = sorted(f"{k} (exit {v})" for k, v in ran.items() if v not in KILLED | SURVIVED | NO_TESTS)
        summary[name] = {"mutants": len(codes), "ran": len(ran), "killed": len(killed), "survived": survived,
                         "no_tests": untested, "other": other}
        print(f"{name}: killed {len(killed)} of {len(ran)} run ({len(codes)} generated); survived: {survived}; "
              f"no tests: {untested}; other (timeout/suspicious): {other}", flush=True)
    (ROOT / "dean_runs" / "mutants" / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
