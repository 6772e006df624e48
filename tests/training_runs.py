"""Helpers for the training tests: one ``p2w train`` run by two gloo processes (torchrun) and by one process, and
the check that both trained the same mapper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2w.mappers.files import read_mapper


def two_and_one_process(common: list[str], home: Path, batch: int, port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``python -m p2w COMMON`` under torchrun with 2 CPU processes of ``batch`` each (name ``ddp``) and as one
    process with ``2 * batch`` (name ``single``), in ``P2W_HOME=home``, one torch thread each: both ``--json``
    summaries."""
    env = {**os.environ, "P2W_HOME": str(home), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    runs = []
    for launcher, per_process, name in ((torchrun, batch, "ddp"), ([sys.executable], 2 * batch, "single")):
        done = subprocess.run(
            [*launcher, "-m", "p2w", *common, "--batch-size", str(per_process), "--name", name],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout))
    return runs[0], runs[1]


def assert_same_run(ddp: dict[str, Any], single: dict[str, Any]) -> None:
    """The same loss at every epoch and the same mapper weights, within 1e-5."""
    np.testing.assert_allclose([e["loss"] for e in ddp["epochs"]], [e["loss"] for e in single["epochs"]], atol=1e-5)
    a = read_mapper(Path(ddp["mapper_path"])).mapper.state_dict()
    b = read_mapper(Path(single["mapper_path"])).mapper.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
