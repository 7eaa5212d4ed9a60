"""The pipeline on a Slurm cluster through the Snakemake profile workflow/profiles/slurm.

`test_slurm_profile_resources` only dry-runs (no cluster needed): it checks what every job
would ask Slurm for, and that partition and account come from the environment.
`test_tiny_pipeline_on_slurm` runs a subset of the tiny study on a real Slurm (a single-node
one started by tests/slurm/start_slurm.sh, which .ci/run calls): every job except the local
`profile` and `report` must go through sbatch, training jobs to the GPU partition with one
GPU, and the table must come out complete. It is skipped when no Slurm answers, unless
MMDISTILL_REQUIRE_SLURM is set, then it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from mmdistill.registry import Registry
from tests.conftest import make_project, subprocess_env, tiny_params
from tests.test_pipeline import check_table

PROFILE = "workflow/profiles/slurm"
ENV_VARS = ("MMDISTILL_SLURM_PARTITION", "MMDISTILL_SLURM_GPU_PARTITION", "MMDISTILL_SLURM_ACCOUNT")
TRAIN_RULES = ("train_teacher", "train_student")
LOCAL_RULES = ("profile", "report")


def subset_params() -> dict:
    """One seed, two teachers (trained side by side), the student without KD and one KD row."""
    params = tiny_params()
    params["seeds"] = [0]
    params["teachers"] = {k: params["teachers"][k] for k in ("video", "complete")}
    params["students"] = {k: params["students"][k] for k in ("nokd", "c2_crd_final")}
    return params


def slurm_env(**values: str) -> dict:
    env = subprocess_env()
    for name in ENV_VARS:
        env.pop(name, None)
    env.update(values)
    return env


def snakemake(args: list[str], cwd: Path, env: dict, timeout: float = 600) -> str:
    proc = subprocess.run(["snakemake", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(cwd.glob("logs/**/*.log")))
        slurm_logs = "\n".join(
            f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(cwd.glob(".snakemake/slurm_logs/**/*.log"))
        )
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}\n{logs}\n{slurm_logs}"
        )
    return out


def dry_run_resources(out: str) -> dict[str, list[dict[str, str]]]:
    """rule name -> the `resources:` of each of its jobs in a `snakemake -n` listing."""
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"^(?:local)?rule ", out, flags=re.M)[1:]:
        rule = block.split(":", 1)[0].strip()
        m = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        res = dict(kv.split("=", 1) for kv in m.group(1).split(", ")) if m else {}
        jobs.setdefault(rule, []).append(res)
    return jobs


def declared_resources(project: Path) -> dict[str, dict[str, str]]:
    """rule -> the resources it would ask Slurm for, read from the workflow's own files: the
    rule's ``resources:`` (workflow/rules/*.smk, Snakefile) over the profile's default-resources."""
    config = (project / PROFILE / "config.yaml").read_text()
    block = re.search(r"^default-resources:\n((?:  .*\n)+)", config, flags=re.M).group(1)
    defaults = dict(re.findall(r"^  (mem_mb|runtime): (\d+)$", block, flags=re.M))
    assert set(defaults) == {"mem_mb", "runtime"}, block
    rules = {}
    for path in [project / "Snakefile", *sorted((project / "workflow" / "rules").glob("*.smk"))]:
        for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n|\n)*)", path.read_text(), flags=re.M):
            res = re.search(r"^    resources:\n((?:        .*\n)+)", m.group(2), flags=re.M)
            declared = dict(re.findall(r"^        (\w+)=(\w+),?$", res.group(1), flags=re.M)) if res else {}
            rules[m.group(1)] = {**defaults, **declared}
    return rules


def test_slurm_profile_resources(tmp_path):
    project = make_project(tmp_path / "proj", subset_params())
    args = ["-n", "--profile", PROFILE]  # the default target: every output of the study

    env = slurm_env(
        MMDISTILL_SLURM_PARTITION="cpuq", MMDISTILL_SLURM_GPU_PARTITION="gpuq", MMDISTILL_SLURM_ACCOUNT="proj42"
    )
    jobs = dry_run_resources(snakemake(args, project, env))
    assert set(TRAIN_RULES) <= set(jobs) and "prepare" in jobs, jobs.keys()
    declared = declared_resources(project)
    for rule in TRAIN_RULES:  # the training rules declare their own (larger) requests
        assert declared[rule]["gpu"] == "1" and int(declared[rule]["mem_mb"]) > 4000, declared[rule]
    gpu_rules = {rule for rule, all_res in jobs.items() if any("gpu" in res for res in all_res)}
    assert set(TRAIN_RULES) <= gpu_rules, gpu_rules
    for rule, all_res in jobs.items():
        if rule in LOCAL_RULES or rule == "all":
            continue
        for res in all_res:
            assert res["slurm_account"] == "proj42", (rule, res)
            # exactly what the rule (or, where it declares none, the profile) asks for
            want = declared[rule]
            assert (res["mem_mb"], res["runtime"]) == (want["mem_mb"], want["runtime"]), (rule, res, want)
            assert res.get("gpu") == want.get("gpu"), (rule, res, want)
            if rule in gpu_rules:  # every GPU rule goes to the GPU partition, with gpu, never gres
                assert res["gpu"] == "1" and "gres" not in res, (rule, res)
                assert res["slurm_partition"] == "gpuq", (rule, res)
            else:
                assert res["slurm_partition"] == "cpuq", (rule, res)

    # no variables: nothing forced on sbatch, Slurm's default partition and account apply
    jobs = dry_run_resources(snakemake(args, project, slurm_env()))
    for rule, all_res in jobs.items():
        for res in all_res:
            assert "slurm_partition" not in res and "slurm_account" not in res, (rule, res)


def test_slurm_profile_shares_gpus_through_a_gres(tmp_path):
    """MMDISTILL_SLURM_GPU_GRES: GPU jobs ask for that GRES (e.g. a shard) instead of a whole GPU."""
    project = make_project(tmp_path / "proj", subset_params())
    env = slurm_env(MMDISTILL_SLURM_GPU_GRES="shard:1")
    jobs = dry_run_resources(snakemake(["-n", "--profile", PROFILE], project, env))
    assert set(TRAIN_RULES) <= set(jobs)
    for rule, all_res in jobs.items():
        for res in all_res:
            if rule in (*TRAIN_RULES, "robustness"):
                assert res["gpu"] == "0" and res["gres"] == "shard:1", (rule, res)
                assert "slurm_partition" not in res, (rule, res)  # no partition variable: the default
            else:
                assert "gres" not in res, (rule, res)


def slurm_unavailable() -> str | None:
    """Why the test cluster cannot be used, or None when it can."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return "Slurm is not installed (no sinfo); start it with `bash tests/slurm/start_slurm.sh`"
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld does not answer"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()} (start Slurm with `bash tests/slurm/start_slurm.sh`)"
    partitions = {line.split()[0].rstrip("*") for line in proc.stdout.splitlines() if line.split()[1:] == ["up"]}
    if not {"cpu", "gpu"} <= partitions:
        return f"partitions cpu and gpu are not both up (sinfo: {proc.stdout.strip()!r}); not the test cluster"
    return None


@pytest.fixture
def slurm_cluster():
    reason = slurm_unavailable()
    if reason:
        if os.environ.get("MMDISTILL_REQUIRE_SLURM"):
            pytest.fail(f"MMDISTILL_REQUIRE_SLURM is set but {reason}")
        pytest.skip(reason)


def slurm_jobs(run_id: str) -> list[dict[str, str]]:
    """`scontrol show job` of every job named after a Snakemake run id (finished ones included)."""
    ids = subprocess.run(
        ["squeue", "-h", "-t", "all", "--name", run_id, "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout.split()
    jobs = []
    for job_id in ids:
        line = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True
        ).stdout.strip()
        jobs.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return jobs


def minutes(time_limit: str) -> int:
    """Slurm's ``[D-]HH:MM:SS`` (or ``MM:SS``) in minutes."""
    days, _, hms = time_limit.rpartition("-")
    parts = [int(x) for x in hms.split(":")]
    h, m, sec = ([0] * (3 - len(parts)) + parts)[-3:]
    return (int(days or 0) * 24 + h) * 60 + m + (sec > 0)


def megabytes(memory: str) -> int:
    """Slurm's memory with its unit (``8000M``, ``8G``) in MB."""
    value, unit = float(memory[:-1]), memory[-1].upper()
    return round(value * {"M": 1, "G": 1024, "T": 1024 * 1024}[unit])


@pytest.mark.slurm
@pytest.mark.e2e
def test_tiny_pipeline_on_slurm(tmp_path, slurm_cluster):
    params = subset_params()
    reg = Registry(params)
    project = make_project(tmp_path / "proj", params)
    env = slurm_env(MMDISTILL_SLURM_PARTITION="cpu", MMDISTILL_SLURM_GPU_PARTITION="gpu")
    out = snakemake(
        [
            "--profile",
            PROFILE,
            # status checks 5, 20, 45 s after a submission (the plugin adds 10 s per check that
            # finds no job done; a tiny job takes 10-20 s); keep every job's log as evidence
            "--slurm-init-seconds-before-status-checks",
            "5",
            "--slurm-keep-successful-logs",
            "results/table1.csv",
        ],
        project,
        env,
        timeout=900,
    )
    check_table(project, params)

    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    jobs = slurm_jobs(run_id)
    by_rule: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        rule = re.match(r"rule_(\w+?)_wildcards_|rule_(\w+)$", job["Comment"])
        by_rule.setdefault(rule.group(1) or rule.group(2), []).append(job)

    n_train = len(reg.seeds) * (len(reg.teachers) + len(reg.students))
    assert len(by_rule.get("train_teacher", [])) + len(by_rule.get("train_student", [])) == n_train, by_rule.keys()
    assert "prepare" in by_rule, by_rule.keys()
    assert not set(LOCAL_RULES) & set(by_rule), "localrules were submitted to Slurm"
    for job in jobs:
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
    declared = declared_resources(project)
    for rule in TRAIN_RULES:
        for job in by_rule[rule]:
            assert job["Partition"] == "gpu" and "gpu:1" in job["TresPerJob"], job
            assert job["NumCPUs"] == str(params["train"]["threads"]), job
    for rule, rule_jobs in by_rule.items():  # what Slurm granted is what the rule asked for
        for job in rule_jobs:
            assert minutes(job["TimeLimit"]) == int(declared[rule]["runtime"]), (rule, job["TimeLimit"])
            assert megabytes(job["MinMemoryNode"]) == int(declared[rule]["mem_mb"]), (rule, job["MinMemoryNode"])
    assert by_rule["prepare"][0]["Partition"] == "cpu", by_rule["prepare"]

    # the plugin's log of every job: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log
    logs = {p.stem for p in project.glob(".snakemake/slurm_logs/rule_*/**/*.log")}
    assert {job["JobId"] for job in jobs} <= logs, (logs, [job["JobId"] for job in jobs])
