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
