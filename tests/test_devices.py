"""Device and precision choice."""

from __future__ import annotations

import pytest
import torch

from p2w.core import devices
from p2w.errors import DeviceError
from p2w.settings import Settings


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert devices.resolve_device("auto").type == "cpu"
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert devices.resolve_device(None).type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto").type == "cuda"


def test_explicit_devices(monkeypatch):
    assert devices.resolve_device("CPU") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        devices.resolve_device("cuda")
    with pytest.raises(DeviceError, match="Apple Metal"):
        devices.resolve_device("mps")
    with pytest.raises(DeviceError, match="unknown device"):
        devices.resolve_device("gpu0")


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="only 1 CUDA"):
        devices.resolve_device("cuda:3")


def test_precision_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert devices.resolve_precision("auto", cpu) == "fp32"
    assert devices.resolve_precision("auto", cuda) == "fp16"
    assert devices.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(DeviceError, match="not supported on the CPU"):
        devices.resolve_precision("fp16", cpu)
    with pytest.raises(DeviceError, match="unknown precision"):
        devices.resolve_precision("int8", cpu)


def test_env_settings(tmp_path):
    s = Settings.from_env(
        {"P2W_HOME": str(tmp_path), "P2W_DEVICE": "cpu", "P2W_MODEL": "ViT-B-32", "P2W_PRETRAINED": ""}
    )
    assert (s.home, s.device, s.model, s.pretrained) == (tmp_path, "cpu", "ViT-B-32", None)  # empty means unset
    assert s.backbone().pretrained == "openai"  # the open_clip models' default
    assert s.backbone("p2w-micro-fashion").pretrained == "builtin"
    assert s.mappers_dir == tmp_path / "mappers"
    assert Settings.from_env({}).home.name == "p2w"


def test_p2w_device_env_reaches_the_engine(tiny, monkeypatch):
    import p2w

    monkeypatch.setenv("P2W_DEVICE", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        p2w.load(model=str(tiny.config), pretrained=str(tiny.weights))


def test_bf16_autocast_on_cpu_stays_close(tiny, images):
    import numpy as np

    import p2w

    args = {"model": str(tiny.config), "pretrained": str(tiny.weights), "mapper": str(tiny.mapper), "device": "cpu"}
    fp32 = p2w.load(**args).encode_query(images[0], "in red")
    bf16 = p2w.load(**args, precision="bf16").encode_query(images[0], "in red")
    assert bf16.dtype == np.float32
    assert float(fp32 @ bf16) > 0.99


def test_default_workers_rule(monkeypatch):
    # (cpus, on CPU, on CUDA): on CPU the model's threads keep the cores; on CUDA decoding bounds the rate
    for cpus, on_cpu, on_cuda in [(1, 0, 1), (2, 0, 1), (3, 0, 2), (4, 1, 3), (8, 2, 7), (16, 4, 8), (64, 16, 8)]:
        monkeypatch.setattr(devices, "available_cpus", lambda n=cpus: n)
        assert devices.default_workers("cpu") == on_cpu, cpus
        assert devices.default_workers(torch.device("cpu")) == on_cpu, cpus
        assert devices.default_workers("cuda") == devices.default_workers(torch.device("cuda", 1)) == on_cuda, cpus
        assert devices.default_workers("mps") == on_cuda, cpus
        assert devices.default_workers("cpu", cpus=cpus) == on_cpu
        assert f"[default: {on_cpu} here on CPU, {on_cuda} on CUDA]" in devices.workers_help()


def test_default_workers_auto_follows_the_device_auto_picks(monkeypatch):
    monkeypatch.setattr(devices, "available_cpus", lambda: 16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.default_workers("auto") == devices.default_workers(None) == 8
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert devices.default_workers("auto") == devices.default_workers("cpu")


def test_available_cpus_is_the_affinity_mask(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert devices.available_cpus() == 2  # a container limited to 2 of the host's 64 CPUs
    monkeypatch.delattr(os, "sched_getaffinity")
    assert devices.available_cpus() == 64  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert devices.available_cpus() == 1


def test_workers_help_and_named_devices_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from p2w.core.devices import default_workers, workers_help\n"
        "print(workers_help()); default_workers('cpu'); default_workers('cuda:0'); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[0].startswith("image decoding processes [default: ")
    assert done.stdout.splitlines()[-1] == "False"


def test_library_calls_without_workers_use_the_default(tmp_path, tiny, images, monkeypatch):
    import inspect

    import p2w
    from p2w.core import features
    from p2w.evaluation import circo, cirr, coco, common, fashioniq, imagenet_r
    from p2w.library.index import index
    from p2w.spec import BackboneSpec
    from p2w.training.config import TrainConfig
    from p2w.training.trainset import load_features

    for fn in [index, common.image_features, load_features, features.fill_cache, features.hash_files]:
        assert inspect.signature(fn).parameters["workers"].default is None, fn
    for mod in [circo, cirr, coco, fashioniq, imagenet_r]:
        assert inspect.signature(mod.evaluate).parameters["workers"].default is None, mod
    assert TrainConfig(data="x").workers is None

    asked, started = [], []
    monkeypatch.setattr(features, "default_workers", lambda device: asked.append(device) or 1)
    real = torch.utils.data.DataLoader

    def loader(*args, **kwargs):  # type: ignore[no-untyped-def]
        started.append(kwargs["num_workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    spec = BackboneSpec(str(tiny.config), str(tiny.weights))
    report = index([tmp_path], spec, lambda: p2w.load(model=spec.model, pretrained=spec.pretrained, device="cpu"))
    assert report.added == len(images)
    assert asked == [torch.device("cpu")] and started == [1]  # the model's device decided; one decoder started
