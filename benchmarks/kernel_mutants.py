"""Hand-made mutants of the fused kernel (scoring/fused_abs_grad.py), each run against the kernel's tests.

    python benchmarks/kernel_mutants.py               # every mutant below
    python benchmarks/kernel_mutants.py upcast_off    # some, by name

mutmut (benchmarks/mutants.py) cannot mutate the kernel: `triton.jit` compiles a function from its source text,
and mutmut's trampolines replace that text. So these are plausible bugs written by hand, one text replacement
each (which must match exactly once, so the list stays true as the module changes), in the kernel's body and in
the Python that launches it. Each runs in a scratch copy (dean_runs/mutants/kernel/) against
tests/test_fused_kernel.py (Triton's interpreter) and tests/test_fused_kernel_compile.py (the kernel compiled for
sm_80-sm_120), stopping at the first failure. Results are recorded in benchmarks/MUTANTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "dean_hf/scoring/fused_abs_grad.py"
TESTS = ["tests/test_fused_kernel.py", "tests/test_fused_kernel_compile.py"]

# name -> (text in SOURCE, its replacement), or a list of them: bugs a change to the kernel could plausibly make.
MUTANTS = {
    # the kernel's arithmetic
    "signed_sum": ("total += tl.abs(tile)", "total += tile"),
    "last_sample_only": ("total += tl.abs(tile)", "total = tl.abs(tile)"),
    "abs_of_the_sum": [("        tile = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)\n", ""),
                       ("    a_base = a_ptr  #", "    tile = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)\n    a_base = a_ptr  #"),
                       ("total += tl.abs(tile)", "total = tl.abs(tile)")],
    "overwrite_acc": ("tl.load(c_ptrs, mask=inside, other=0.0) + total", "total"),
    "tf32_products": ('input_precision="ieee"', 'input_precision="tf32"'),
    # ragged samples and padding
    "padding_read": ("real = t < length", "real = t < tokens"),
    "one_token_past": ("real = t < length", "real = t <= length"),
    "first_length_for_all": ("length = tl.load(lengths_ptr + s)", "length = tl.load(lengths_ptr)"),
    "first_block_skipped": ("range(0, length, BLOCK_K)", "range(BLOCK_K, length, BLOCK_K)"),
    "a_not_advanced": ("        a_base += stride_ab\n", ""),
    "b_advanced_by_a_stride": ("b_base += stride_bb", "b_base += stride_ab"),
    # tiles and their edges
    "m_edge": ("in_m = offs_m < M", "in_m = offs_m <= M"),
    "n_edge_unmasked": ("mask=real[:, None] & in_n[None, :]", "mask=real[:, None]"),
    "store_unmasked": ("tl.store(c_ptrs, tl.load(c_ptrs, mask=inside, other=0.0) + total, mask=inside)",
                       "tl.store(c_ptrs, tl.load(c_ptrs, mask=inside, other=0.0) + total)"),
    "group_overrun": ("group_m = tl.minimum(tiles_m - first_m, GROUP_M)", "group_m = GROUP_M"),
    "group_start": ("first_m = (pid // per_group) * GROUP_M", "first_m = pid // per_group"),
    "acc_strides_swapped": ("acc.stride(0), acc.stride(1), **constants", "acc.stride(1), acc.stride(0), **constants"),
    "grid_by_block_m": ('triton.cdiv(n, constants["BLOCK_N"])', 'triton.cdiv(n, constants["BLOCK_M"])'),
    # the launch's Python
    "never_ragged": ("ragged = any(length != tokens for length in lengths)", "ragged = False"),
    "strided_features_kept": ("a = a if a.stride(2) == 1 else a.contiguous()", "a = a"),
    "no_promotion": ("if b.dtype != a.dtype:", "if False:"),
    "stale_lengths": ("if cached is None or cached[0] != key:", "if cached is None:"),
    "upcast_off": ("UPCAST=not ieee and interpreter", "UPCAST=False"),
    "fp32_on_tensor_cores": ("ieee = dtype == torch.float32", "ieee = False"),
    "fp32_tiles_for_16bit": ('_CONFIGS["fp32" if ieee else "16bit"]', '_CONFIGS["fp32"]'),
    "sm75_admitted": ("if (major, minor) < MIN_CAPABILITY:", "if (major, minor) < (7, 5):"),
    "sm80_refused": ("if (major, minor) < MIN_CAPABILITY:", "if (major, minor) <= MIN_CAPABILITY:"),
    "unsupported_dtype_admitted": ("if dtype not in SUPPORTED_DTYPES:", "if False:"),
    "interpreter_always": ("if device.type == \"cpu\" and allow_interpreter and interpreting():",
                           "if device.type == \"cpu\" and allow_interpreter:"),
}


def edits(name: str) -> list[tuple[str, str]]:
    """The text replacements that make mutant `name`."""
    return MUTANTS[name] if isinstance(MUTANTS[name], list) else [MUTANTS[name]]


def prepare() -> Path:
    """A scratch copy of the package and its tests, where one mutant at a time is written."""
    work = ROOT / "dean_runs" / "mutants" / "kernel"
    for folder in ("dean_hf", "tests", "model_cards"):
        shutil.rmtree(work / folder, ignore_errors=True)
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return work


def run_tests(work: Path, timeout: float = 900) -> tuple[bool, str, float]:
    """(whether a test failed, the first failing test's line, seconds). A run past `timeout` counts as failed: a
    mutant that writes out of bounds can corrupt the interpreter's heap and loop for ever."""
    env = {**os.environ, "PYTHONPATH": str(work)}
    env.pop("TRITON_INTERPRET", None)
    start = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", *TESTS, "-x", "-q", "-p", "no:cacheprovider",
                              "-W", "ignore::DeprecationWarning", "-W", "ignore::FutureWarning"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True, f"timeout after {timeout:.0f} s", time.perf_counter() - start
    failed = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    last = (run.stdout.strip() or run.stderr.strip() or "no output").splitlines()[-1]
    return run.returncode != 0, (failed[0] if failed else f"exit {run.returncode}: {last}"), \
        time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("names", nargs="*", metavar="MUTANT", help="some of the mutants (default: all)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutants {unknown}: expected some of {list(MUTANTS)}")
    original = (ROOT / SOURCE).read_text()
    for name in MUTANTS:
        for old, _ in edits(name):
            if original.count(old) != 1:
                parser.error(f"mutant {name}: {old!r} occurs {original.count(old)} times in {SOURCE}, expected once")
    work = prepare()
    failed, line, baseline = run_tests(work)
    if failed:
        raise SystemExit(f"the unmutated tests fail: {line}")
    results = {}
    for name in args.names or list(MUTANTS):
        mutated = original
        for old, new in edits(name):
            mutated = mutated.replace(old, new)
        (work / SOURCE).write_text(mutated)
        killed, line, seconds = run_tests(work, timeout=3 * baseline + 60)
        results[name] = {"killed": killed, "by": line if killed else None, "seconds": round(seconds, 1)}
        print(f"{name}: {'killed by ' + line if killed else 'SURVIVED'} ({seconds:.0f} s)", flush=True)
    (work / SOURCE).write_text(original)
    killed = sum(r["killed"] for r in results.values())
    print(f"killed {killed} of {len(results)}; survived: {[n for n, r in results.items() if not r['killed']]}")
    (work / "summary.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
