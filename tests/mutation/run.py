"""Mutation testing of the modules behind the headline claims, with mutmut 3.

Usage (from the project root, in the project's environment with ``pip install mutmut``)::

    python tests/mutation/run.py                      # every module of MODULES
    python tests/mutation/run.py registry report/stats   # some of them
    python tests/mutation/run.py --workdir /tmp/m --children 2 registry

For each module it copies the working tree (tracked and untracked, not ignored files) into
``<workdir>/<module>/``, writes a ``[tool.mutmut]`` section that mutates that one module and
selects the tests listed for it in :data:`MODULES` (the fast, in-process tests that exercise
it; mutmut then runs, for each mutant, only the selected tests that call the mutated
function), runs ``mutmut run`` there and writes ``<workdir>/<module>.json``: the commit, the
count per status, the score (killed and timed-out mutants over all mutants) and the diff of
every mutant that was not killed. Tests that start subprocesses (Snakemake, the CLI) are
left out: mutmut can only attribute in-process calls to the mutant under test.

The runs are CPU-heavy: run them under ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# tests of the selected files that need the session's Snakemake run (tests/conftest.py: tiny_run)
NEEDS_PIPELINE = [
    "-m",
    "not e2e",
    "--deselect",
    "tests/test_report.py::test_pipeline_writes_every_figure",
    "--deselect",
    "tests/test_report.py::test_figures_fast_and_skip_absent_rows",
    "--deselect",
    "tests/test_report.py::test_snakemake_html_report",
    "--deselect",
    "tests/test_report.py::test_best_student_of_the_cost_line_is_picked_on_validation",
]
NOT_E2E = ["-m", "not e2e"]
DATA_TESTS = [
    "tests/test_data_prepare.py",
    "tests/test_data_sources.py",
    "tests/test_checksums.py",
    "tests/test_acquire_folds.py",
    "tests/test_data_mmsa.py",
    "tests/test_data_sdk_csd.py",
    *NOT_E2E,
]
# module (path under src/mmdistill, without .py) -> pytest arguments selecting its tests
MODULES: dict[str, list[str]] = {
    "registry": [
        "tests/test_registry.py",
        "tests/test_registry_contract.py",
        "tests/test_registry_inputs.py",
        "tests/test_method_options.py",
        "tests/test_student_modality.py",
        "tests/test_any_lengths.py",
        "tests/test_schedule.py",
        "tests/test_errors.py",
        *NOT_E2E,
        "--deselect",
        "tests/test_registry.py::test_no_pipeline_output_is_committed",
    ],
    "report/stats": [
        "tests/test_report.py",
        "tests/test_table_numbers.py",
        "tests/test_stats_table.py",
        *NEEDS_PIPELINE,
    ],
    "report/table": [
        "tests/test_report.py",
        "tests/test_table_numbers.py",
        "tests/test_stats_table.py",
        *NEEDS_PIPELINE,
    ],
    "data/download": ["tests/test_data_download.py", "tests/test_download_fallback.py", "tests/test_checksums.py"],
    "data/acquire": DATA_TESTS,
    "data/prepare": DATA_TESTS,
    "train/loop": [
        "tests/test_train.py",
        "tests/test_train_behaviour.py",
        "tests/test_train_objective.py",
        "tests/test_resume_distill.py",
    ],
}
# what the tests read beside tests/ and src/ (mutmut copies tests/ and pyproject.toml itself)
ALSO_COPY = ["params.yaml", "params-paper.yaml", "Snakefile", "dvc.yaml", "workflow", "profiles", ".gitignore"]
KILLED = {"killed", "timeout"}


def working_tree_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def commit_of(root: Path, ref: str | None) -> str:
    if ref is not None:
        return subprocess.run(
            ["git", "rev-parse", ref], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "tests"], cwd=root, capture_output=True, text=True
    )
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare_copy(module: str, dest: Path, ref: str | None) -> None:
    """The project's files (a commit's, or the working tree's) in ``dest``, symlinks kept."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if ref is not None:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        for rel in working_tree_files(ROOT):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target, follow_symlinks=False)
    for generated in ("results", "data"):
        shutil.rmtree(dest / generated, ignore_errors=True)
    # test files this version lacks (an older commit) are left out of the selection
    selection = [a for a in MODULES[module] if not a.startswith("tests/") or (dest / a.split("::")[0]).exists()]
    with open(dest / "pyproject.toml", "a") as f:
        f.write(
            "\n[tool.mutmut]\n"
            'source_paths = ["src"]\n'
            f'only_mutate = ["src/mmdistill/{module}.py"]\n'
            f"also_copy = {toml_list(ALSO_COPY)}\n"
            f"pytest_add_cli_args_test_selection = {toml_list(selection)}\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore"]\n'
        )


def results(cwd: Path, env: dict) -> dict[str, str]:
    out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=cwd, env=env, capture_output=True, text=True)
    status = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    return status


DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = get_diff_for_mutant(name, path=find_mutant(name).path)
    except Exception as exc:  # a diff is documentation only
        out[name] = f"(no diff: {exc})"
print(json.dumps(out))
"""


def mutant_diffs(cwd: Path, env: dict, names: list[str]) -> dict[str, str]:
    """The source diff of each named mutant (one process for all of them)."""
    if not names:
        return {}
    out = subprocess.run([sys.executable, "-c", DIFFS, *names], cwd=cwd, env=env, capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def refresh_tests(module: str, dest: Path, ref: str | None) -> None:
    """Replace the tests and the mutmut section of an earlier run's copy with this version's;
    the source must be the same as in that run."""
    fresh = dest.with_name(dest.name + ".fresh")
    prepare_copy(module, fresh, ref)
    for path in (fresh / "src").rglob("*"):
        old = dest / path.relative_to(fresh)
        if path.is_file() and (not old.is_file() or old.read_bytes() != path.read_bytes()):
            shutil.rmtree(fresh)
            raise SystemExit(f"{module}: {path.relative_to(fresh)} changed since the run in {dest}; run it afresh")
    shutil.rmtree(dest / "tests")
    shutil.copytree(fresh / "tests", dest / "tests", symlinks=True)
    shutil.copy2(fresh / "pyproject.toml", dest / "pyproject.toml")
    shutil.rmtree(fresh)


def run_module(
    module: str, workdir: Path, children: int, ref: str | None, summarize_only: bool = False, rerun: bool = False
) -> dict:
    dest = workdir / module.replace("/", "_")
    commit = commit_of(ROOT, ref)  # before the copy: HEAD may move while the run goes on
    if ref is not None:
        ref = commit
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the mutated copy under mutants/src must be the one imported
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MMDISTILL_TEST_MUTATION"] = "1"
    names: list[str] = []
    if rerun:  # only the mutants an earlier run of the same source did not kill, with these tests
        earlier = results(dest, env)
        names = sorted(n for n, st in earlier.items() if st not in KILLED)
        (dest / "earlier_results.json").write_text(json.dumps(earlier))
        refresh_tests(module, dest, ref)
    elif not summarize_only:
        prepare_copy(module, dest, ref)
    start = time.time()
    returncode = None
    if not summarize_only and (names or not rerun):
        with open(workdir / f"{module.replace('/', '_')}{'.rerun' if rerun else ''}.log", "w") as log:
            cmd = ["mutmut", "run", "--max-children", str(children), *names]
            returncode = subprocess.run(cmd, cwd=dest, env=env, stdout=log, stderr=log).returncode
    seconds = time.time() - start
    status = results(dest, env)
    if (dest / "earlier_results.json").exists():
        # mutmut forgets cached verdicts when the test selection changes: a mutant the earlier run
        # killed is killed again by the same tests, which the newer selection still holds
        earlier = json.loads((dest / "earlier_results.json").read_text())
        status = {n: ("killed" if st == "not checked" and earlier.get(n) in KILLED else st) for n, st in status.items()}
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    killed = sum(n for s, n in counts.items() if s in KILLED)
    survivors = sorted(name for name, s in status.items() if s not in KILLED)
    diffs = mutant_diffs(dest, env, survivors)
    not_killed = {name: {"status": status[name], "diff": diffs.get(name, "")} for name in survivors}
    report = {
        "module": f"src/mmdistill/{module}.py",
        "commit": commit,
        "tests": [a for a in MODULES[module] if not a.startswith("tests/") or (dest / a.split("::")[0]).exists()],
        "mutmut_exit_code": returncode,
        "seconds": round(seconds) if returncode is not None else None,
        "rerun_of_not_killed": len(names) if rerun else None,
        "mutants": len(status),
        "counts": counts,
        "score": round(killed / len(status), 4) if status else None,
        "not_killed": not_killed,
    }
    (workdir / f"{module.replace('/', '_')}.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", default=list(MODULES), help=f"any of {list(MODULES)}")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "mmdistill-mutation")
    ap.add_argument("--ref", help="test this commit instead of the working tree")
    ap.add_argument("--summarize-only", action="store_true", help="only summarize an earlier run in --workdir")
    ap.add_argument(
        "--rerun-not-killed",
        action="store_true",
        help="rerun only the mutants an earlier run (same source) did not kill, with this version's tests",
    )
    ap.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1)")
    args = ap.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    if shutil.which("mutmut") is None:
        ap.error("mutmut is not installed in this environment (pip install mutmut)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    for module in args.modules:
        r = run_module(module, args.workdir, args.children, args.ref, args.summarize_only, args.rerun_not_killed)
        print(
            f"{r['module']}: {r['score']:.1%} killed of {r['mutants']} mutants {r['counts']} in {r['seconds']} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
