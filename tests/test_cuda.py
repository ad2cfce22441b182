"""The CUDA paths (marked ``cuda``; skipped without a GPU): bf16 autocast, channels_last, torch.compile, the gate
head in fp32, plates and prior constants on the device, state and random states restored onto the GPU, batches
and bench inputs on the device. ``experiments/device_check.sh`` runs them on a GPU; its CPU form runs them on the
CPU (``PYRO_NCL_CUDA_TESTS_ON_CPU=1``) to check the tests themselves."""
import importlib
import os
from pathlib import Path

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from PIL import Image

from pyro_ncl import checkpoint
from pyro_ncl.checkpoint import gather_rng_states, restore_training_state, training_state
from pyro_ncl.config import Config
from pyro_ncl.data.base import ImageTensors, InMemoryData
from pyro_ncl.data.file_data import FolderData
from pyro_ncl.data.imagenet100 import imagenet_device_augment, imagenet_eval_transform, normalise
from pyro_ncl.system import accelerate, build_system
from pyro_ncl.train import SVITrainer

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parent.parent
B, N = 8, 64


@pytest.fixture
def device():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("PYRO_NCL_CUDA_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("needs a CUDA GPU (experiments/device_check.sh runs it)")


@pytest.fixture(autouse=True)
def _no_validation():
    pyro.enable_validation(False)  # as run_svi: validation reads values back to the host


def _config(**extra):
    """The sampled gate with a head (``relaxed_st``) unless ``extra`` names another guide."""
    return Config(width=4, hidden_dim=32, feature_dim=16, batch_size=B, **{"guide": "relaxed_st", **extra}).resolved()


def _inputs(device, channels=3, size=16):
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(B, channels, size, size, generator=g).to(device) for _ in range(2))
    index = torch.arange(B, device=device)
    return x1, x2, index % 4, index


def _twins(config, device, **speed):
    """Two systems with the same weights on ``device``: plain, and with ``accelerate(**speed)``."""
    torch.manual_seed(0)
    plain = build_system(config, 3, 4, device)
    fast = build_system(config, 3, 4, device)
    fast.load_state_dict(plain.state_dict())
    return plain, accelerate(fast, **speed)


def _losses(system, config, device, steps=2):
    trainer, out = SVITrainer(system, config, steps_per_epoch=10), []
    for step in range(steps):
        pyro.set_rng_seed(step)  # the same gate noise for both twins
        out.append(trainer.step(*_inputs(device), num_images=N))
    return out


def test_bf16_autocast_runs_the_encoder_in_bf16_and_the_gate_head_and_loss_in_fp32(device):
    config = _config()
    plain, fast = _twins(config, device, amp="bf16")
    dtypes = {}
    fast.encoder.backbone.stem[0].register_forward_hook(lambda m, i, o: dtypes.setdefault("conv", o.dtype) and None)
    fast.guide.head[0].register_forward_hook(lambda m, i, o: dtypes.setdefault("gate head", o.dtype) and None)
    reference, accelerated = _losses(plain, config, device), _losses(fast, config, device)
    assert dtypes == {"conv": torch.bfloat16, "gate head": torch.float32}
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p in fast.parameters())
    np.testing.assert_allclose(accelerated, reference, rtol=0.05)  # bf16 keeps ~3 significant digits


def test_gate_head_stays_fp32_inside_autocast(device):
    system = build_system(_config(), 3, 4, device)
    h = torch.randn(B, system.encoder.backbone_dim, device=device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        logits = system.guide.logits(h.bfloat16())
    assert logits.dtype == torch.float32 and system.guide.head[0].weight.dtype == torch.float32


def test_channels_last_gives_the_same_steps(device):
    config = _config()
    plain, fast = _twins(config, device, channels_last=True)
    assert fast.encoder.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(_losses(fast, config, device), _losses(plain, config, device), rtol=1e-3)


def test_compile_gives_the_same_steps(device):
    if device.type != "cuda":
        pytest.skip("torch.compile on the CPU needs a C++ toolchain and minutes; checked on the GPU only")
    config = _config()
    plain, fast = _twins(config, device, compile=True)
    np.testing.assert_allclose(_losses(fast, config, device), _losses(plain, config, device), rtol=1e-3)


@pytest.mark.parametrize("parts", [dict(), dict(prior="beta_bernoulli"), dict(prior="concrete", guide="relaxed_soft"),
                                   dict(guide="bernoulli")], ids=["bernoulli", "beta_bernoulli", "concrete", "exact"])
def test_plates_and_prior_constants_are_on_the_device(device, parts):
    config = _config(**parts)
    system = build_system(config, 3, 4, device)
    x1, x2, y, index = _inputs(device)
    batch = system.encode(x1, x2, index, N, y)
    trainer = SVITrainer(system, config, steps_per_epoch=10)
    model, guide = trainer.objective(batch)
    guide_trace = poutine.trace(guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    for trace in (guide_trace, model_trace):
        trace.compute_log_prob()
        sites = [site for site in trace.nodes.values() if site["type"] in ("sample", "param")]
        assert {"gate", "views"} <= {site["name"] for site in sites}
        for site in sites:
            assert site["value"].device == device, site["name"]
            if "log_prob" in site:
                assert site["log_prob"].device == device, site["name"]
            fn = site.get("fn")
            while hasattr(fn, "base_dist"):  # masked, independent, transformed: the distribution inside
                fn = fn.base_dist
            for attr in ("probs", "logits", "temperature", "concentration1", "concentration0"):
                value = getattr(fn, attr, None)
                if isinstance(value, torch.Tensor):
                    assert value.device == device, (site["name"], attr)


def test_resumed_bernoulli_baseline_is_on_the_device_and_the_next_step_runs(device, tmp_path):
    config = _config(guide="bernoulli", baseline="decaying")
    system = build_system(config, 3, 4, device)
    trainer = SVITrainer(system, config, steps_per_epoch=10)
    trainer.step(*_inputs(device), num_images=N)
    state = training_state(system, trainer, config, 0, 1, 0.0, gather_rng_states())
    checkpoint.save_atomic(state, tmp_path / "checkpoint.pt")
    loaded = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")  # onto the CPU, as --resume loads it
    pyro.clear_param_store()
    resumed = build_system(config, 3, 4, device)
    trainer = SVITrainer(resumed, config, steps_per_epoch=10)
    restore_training_state(loaded, resumed, trainer, seed=0)
    assert pyro.get_param_store()["__baseline_avg_downstream_cost_gate"].device == device
    assert np.isfinite(trainer.step(*_inputs(device), num_images=N))


def test_random_states_of_more_gpus_than_visible_are_restored_for_the_visible_ones(device, capsys):
    if device.type != "cuda":
        pytest.skip("the CPU test fakes the GPU count (test_gpu_readiness)")
    state = gather_rng_states()[0]
    visible = torch.cuda.device_count()
    state["cuda"] = state["cuda"] + [state["cuda"][0].clone() for _ in range(2)]  # saved on 2 more GPUs
    torch.cuda.manual_seed_all(123)  # something else, to see the restore
    checkpoint._set_rng_state(state)
    assert torch.equal(torch.cuda.get_rng_state(0), state["cuda"][0])
    assert f"CUDA random states of {visible + 2} GPU(s), {visible} visible now" in capsys.readouterr().err


def test_batches_of_every_data_path_are_on_the_device(device, tmp_path):
    g = torch.Generator().manual_seed(0)
    split = ImageTensors(torch.randint(0, 256, (2 * B, 3, 16, 16), dtype=torch.uint8, generator=g),
                         torch.arange(2 * B) % 4)
    memory = InMemoryData("m", split, split, 4, [0.5] * 3, [0.25] * 3)
    rng, samples = np.random.default_rng(0), []
    for i in range(2 * B):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
        samples.append((str(tmp_path / f"{i}.jpg"), i % 4))
    crop, augment = imagenet_device_augment(16)
    folder = FolderData("f", samples, samples, 4, crop, imagenet_eval_transform(16), 16, num_workers=1,
                        device_augment=augment, device_normalize=normalise)
    for data in (memory, folder):
        for rank in (0, 1):
            x1, x2, y, index = next(data.train_batches(B, 0, 0, device, rank=rank, world_size=2))
            assert {t.device for t in (x1, x2, y, index)} == {device} and x1.shape[0] == B // 2
            assert x1.dtype == torch.float32
        x, y = next(data.eval_batches("test", B, device))
        assert x.device == y.device == device and x.dtype == torch.float32
    folder.close()


def test_bench_step_with_labels_runs_on_the_device(device, capsys):
    bench = importlib.import_module("pyro_ncl.commands.bench_step")
    args = bench.parser().parse_args(["--method", "simlap", "--batch-size", "8", "--width", "4", "--hidden-dim", "16",
                                      "--feature-dim", "8", "--size", "16", "--repeats", "1", "--warmup", "1",
                                      "--device", device.type])
    assert bench.main(args) > 0 and f"device {device.type}" in capsys.readouterr().out
