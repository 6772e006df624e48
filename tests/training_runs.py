"""Helpers for the training tests: one ``p2w train`` run by two gloo processes (torchrun) and by one process, and
the check that both trained the same mapper; ``torchrun_train``: the library's ``train`` on two gloo processes, the
second of them made late or interrupted (``python -m training_runs SPEC`` is what each rank runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def torchrun_train(spec: dict[str, Any], home: Path, port: int, timeout: float = 240) -> list[dict[str, Any]]:
    """``train(TrainConfig(**spec["config"]))`` under torchrun, 2 CPU processes in ``P2W_HOME=home``; rank 1 first
    sleeps ``spec["late_start"]`` s, sleeps ``spec["late_reads"]`` s before each ``FeatureCache.get`` and sends
    itself SIGINT (Ctrl-C) before step ``spec["sigint_at"]``; ``spec["report_every"]`` sets ``loop.REPORT_EVERY``.
    Returns what each rank saw (``name``, ``images``, ``skipped``, ``step_losses``, or ``interrupted``, or ``error``,
    a ``P2WError``'s message). A run that
    does not end in ``timeout`` s (a rank waiting for another forever) fails the test."""
    out = home / "ranks"
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps({**spec, "out": str(out)}))
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), here) if p)
    env = {**os.environ, "P2W_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    command = [*torchrun, "-m", "training_runs", str(spec_file)]
    pipe = subprocess.PIPE
    proc = subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the ranks it started
        _, err = proc.communicate()
        raise AssertionError(f"the 2-process run did not end in {timeout} s: {err[-2000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _late_rank(spec: dict[str, Any]) -> None:
    """Make this rank (rank 1) late: a delay only, the library's code paths still run."""
    from p2w.core.features import FeatureCache
    from p2w.training import loop

    time.sleep(spec.get("late_start", 0))
    get, delay = FeatureCache.get, spec.get("late_reads", 0)

    def late_get(self: FeatureCache, *args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return get(self, *args, **kwargs)

    FeatureCache.get = late_get  # type: ignore[method-assign]
    step, at = loop._step, spec.get("sigint_at")

    def step_then_ctrl_c(run: Any) -> Any:
        if run.step == at:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C in this rank's terminal does
        return step(run)

    loop._step = step_then_ctrl_c


def _rank_main(spec_file: str) -> None:
    from p2w.errors import P2WError, TrainingInterrupted
    from p2w.training import loop
    from p2w.training.config import TrainConfig

    spec = json.loads(Path(spec_file).read_text())
    rank = int(os.environ["RANK"])
    if rank == 1:
        _late_rank(spec)
    loop.REPORT_EVERY = spec.get("report_every", loop.REPORT_EVERY)
    seen: dict[str, Any] = {"rank": rank}
    try:
        result = loop.train(TrainConfig(**spec["config"]))
        seen |= {"name": result.name, "images": result.images, "skipped": result.skipped}
        seen["step_losses"] = result.step_losses
    except TrainingInterrupted as exc:
        seen["interrupted"] = str(exc)
    except P2WError as exc:
        seen["error"] = str(exc)
    Path(spec["out"], f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    _rank_main(sys.argv[1])
