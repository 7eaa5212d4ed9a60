"""A bare GPU node has torch, numpy, h5py, pandas, pyyaml and scipy only: training, the GPU
benchmark's code and the CUDA tests' imports must work there.

The interpreter is started with tests/gpu/bare/sitecustomize.py first on PYTHONPATH, which
makes snakemake, dvc, jsonschema, tqdm, sklearn and matplotlib impossible to import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import importlib, logging, sys, tempfile
    from pathlib import Path
    logging.basicConfig(level=logging.INFO)
    for name in ("snakemake", "dvc", "jsonschema", "tqdm", "sklearn", "matplotlib"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            sys.exit(f"{name} was importable: the blocker does not work")
    import mmdistill.cli, mmdistill.gpu_bench, mmdistill.gpu_cost  # noqa: F401
    assert mmdistill.cli.main(["validate", "--params", "params.yaml", "--override", "params-paper.yaml"]) == 0
    import tests.test_cuda  # noqa: F401  (the CUDA tests' imports)
    from mmdistill.registry import Registry
    reg = Registry.from_file("params.yaml", overrides=["params-paper.yaml"])  # no jsonschema: warning
    from dataclasses import replace
    from tests.test_train import CFG, make_model, make_split
    from mmdistill.train.loop import train
    res = train(make_model(), make_split("train", 32, 1), make_split("valid", 16, 2), replace(CFG, epochs=1),
                seed=3, run_label="bare", resume_path=Path(tempfile.mkdtemp()) / "r.pt", config_hash="h",
                progress=True)
    print("TRAINED", res.epochs_run, len(reg.students))
    """
)


def test_training_runs_without_optional_packages():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "gpu" / "bare"), str(ROOT / "src"), str(ROOT)])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("MMDISTILL_BLOCK_MODULES", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    from mmdistill.registry import Registry

    n_students = len(Registry.from_file(ROOT / "params.yaml", overrides=[ROOT / "params-paper.yaml"]).students)
    assert f"TRAINED 1 {n_students}" in proc.stdout
    assert "jsonschema is not installed: the parameters are not checked against" in proc.stderr
    assert "tqdm is not installed: plain progress lines" in proc.stderr
    assert "bare epoch 1/1: 2/2" in proc.stderr  # the plain progress line of the last step
