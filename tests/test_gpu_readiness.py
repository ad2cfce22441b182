"""What a GPU run needs, checked on the CPU: restored state on the parameters' device, CUDA RNG states for the
GPUs that are visible, bench inputs on the step's device, one host-device synchronisation per step, and the
defaults that feed a GPU (cuDNN benchmark, TF32, loader workers, uint8 views, batched colour work)."""
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from PIL import Image

from pyro_ncl import backends, checkpoint
from pyro_ncl.checkpoint import gather_rng_states, restore_training_state, training_state
from pyro_ncl.config import Config
from pyro_ncl.data.augment import NUM_PARAMS, BatchAugment, draw
from pyro_ncl.data.base import ImageTensors, InMemoryData
from pyro_ncl.data.file_data import FolderData
from pyro_ncl.data.imagenet100 import _normalise_views, imagenet_device_augment, imagenet_eval_transform
from pyro_ncl.data.imagenet100 import imagenet_train_transform, normalise
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "__baseline_avg_downstream_cost_gate"


def _load(name):
    module = importlib.import_module(f"pyro_ncl.commands.{name}")
    return module


def _tiny(**extra):
    return Config(width=4, hidden_dim=16, feature_dim=8, batch_size=8, **extra).resolved()


# ---------------------------------------------------------------- break 1: state onto the parameters' device
def test_pyro_params_are_restored_onto_the_device_of_the_parameters():
    """The decaying-average baseline of --guide bernoulli lives in Pyro's param store, outside the modules; the
    checkpoint loads onto the CPU. Restored into a system on another device (here "meta", standing in for a GPU),
    it must land on that device (before the fix it stayed a CPU tensor: a device mismatch at the next CUDA step)."""
    pyro.enable_validation(False)
    config = _tiny(guide="bernoulli", baseline="decaying")
    system = build_system(config, 1, 10)
    trainer = SVITrainer(system, config, steps_per_epoch=10)
    x = torch.randn(8, 1, 16, 16)
    trainer.step(x, x.flip(-1), torch.arange(8), torch.arange(8), num_images=64)
    saved = pyro.get_param_store()[BASELINE].detach().clone()
    assert saved.device.type == "cpu" and saved.abs().sum() > 0  # a real baseline was written by the step
    state = training_state(system, trainer, config, 0, 1, 0.0, gather_rng_states())
    pyro.clear_param_store()
    target = build_system(config, 1, 10).to("meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying values into meta tensors is a no-op, and torch says so
        restore_training_state(state, target, SVITrainer(target, config, steps_per_epoch=10), seed=0)
    restored = pyro.get_param_store()[BASELINE]
    assert restored.device.type == "meta" and restored.shape == saved.shape


# ---------------------------------------------------------------- break 2: CUDA RNG states for visible GPUs
class _FakeCuda:
    """``visible`` GPUs: ``set_rng_state(state, i)`` records and, like torch, fails for a GPU that is not there."""

    def __init__(self, visible):
        self.visible, self.restored = visible, {}

    def set_rng_state(self, state, device="cuda"):
        if device >= self.visible:
            raise IndexError(f"no GPU {device}")
        self.restored[device] = state


@pytest.mark.parametrize("saved, visible", [(4, 2), (1, 3), (2, 2), (0, 1)])
def test_cuda_rng_states_are_restored_for_the_gpus_that_are_visible(saved, visible, monkeypatch, capsys):
    fake = _FakeCuda(visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", fake.set_rng_state)  # what set_rng_state_all calls
    state = gather_rng_states()[0]
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(saved)]
    if saved:
        state["cuda"] = states
    checkpoint._set_rng_state(state)
    kept = min(saved, visible)
    assert sorted(fake.restored) == list(range(kept))
    assert all(torch.equal(fake.restored[i], states[i]) for i in range(kept))
    note = capsys.readouterr().err
    if saved == visible:
        assert note == ""
    else:
        assert f"CUDA random states of {saved} GPU(s), {visible} visible now" in note and "\n" == note[-1]
        assert (f"cuda:0..cuda:{kept - 1}" if kept else "none restored") in note


# ---------------------------------------------------------------- break 3: bench_step inputs on the device
def test_bench_step_makes_every_input_on_the_step_device():
    bench = _load("bench_step")
    x1, x2, index, labels = bench.step_inputs(6, 3, 8, torch.device("meta"))
    assert {t.device.type for t in (x1, x2, index, labels)} == {"meta"}
    cpu_labels = bench.step_inputs(12, 1, 4, "cpu")[3]
    assert cpu_labels.tolist() == [i % 10 for i in range(12)]  # positives and negatives for a supervised loss


def test_bench_step_runs_simlap_and_times_the_simclr_step(capsys):
    bench = _load("bench_step")
    args = bench.parser().parse_args(["--method", "simlap", "--batch-size", "8", "--width", "4", "--hidden-dim",
                                      "16", "--feature-dim", "8", "--size", "16", "--repeats", "1", "--warmup", "0",
                                      "--device", "cpu"])
    assert bench.main(args) > 0
    out = capsys.readouterr().out
    assert "plain SimCLR" in out and "ratio SVI / SimCLR time" in out


# ---------------------------------------------------------------- one synchronisation per step
def test_every_path_waits_for_the_device_once_per_step():
    """experiments/count_syncs.py on the CPU: the calls that would make the host wait for a GPU, per step, for
    the in-memory, STL-10 and folder data paths, every method, and the data-parallel path (one-process gloo group
    running the gather, GlobalBatchNorm and the flat all-reduce): 0 to make a batch, 1 in the step."""
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "count_syncs.py"), "--device", "cpu",
                             "--warmup", "1", "--steps", "1", "--batch-size", "8", "--size", "16", "--width", "4",
                             "--hidden-dim", "16", "--feature-dim", "8", "--workers", "1"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| path ")]
    assert len(rows) == 12 and all(line.split("|")[2:4] == ["  0.0 ", "  1.0 "] for line in rows), result.stdout


def test_the_counter_sees_what_waits():
    """The CPU counter flags the patterns that wait on CUDA and nothing in their sync-free replacements."""
    counter = _load("count_syncs").CallCounter
    x, idx, mask = torch.randn(4, 4), torch.arange(4), torch.rand(4) > 0.5
    waits = [lambda: x.sum().item(), lambda: float(x.sum()), lambda: bool(x.sum() > 0), lambda: x.tolist(),
             lambda: x[mask], lambda: x.nonzero(), lambda: torch.as_tensor(1.0, device=x.device),
             lambda: torch.rand(3).to(x.device), lambda: x.__setitem__((idx, idx), 0.0)]
    free = [lambda: x.sum(), lambda: torch.where(x > 0, x, 0.0), lambda: x.masked_fill(mask[:, None], 0.0),
            lambda: x.to(torch.float64), lambda: torch.full((), 2.0, device=x.device), lambda: x[idx],
            lambda: torch.rand(3).pin_memory().to(x.device, non_blocking=True) if torch.cuda.is_available() else x]
    for fn in waits + free:
        with counter() as mode:
            fn()
        assert len(mode.calls) == (fn in waits), fn


def test_augmentation_parameters_are_one_draw_per_batch_and_shards_keep_their_rows():
    g = torch.Generator().manual_seed(3)
    whole = draw(2, 8, g, "cpu")
    assert whole.shape == (2, 8, NUM_PARAMS) and 0 <= whole.min() and whole.max() < 1
    part = draw(2, 8, torch.Generator().manual_seed(3), "cpu", rows=slice(4, 8))
    assert torch.equal(part, whole[:, 4:8])
    aug = BatchAugment(16, grayscale_prob=0.5, blur_prob=0.5, blur_kernel=5)
    x = torch.rand(8, 3, 20, 20)
    full = aug(x, params=whole[0])
    assert torch.allclose(aug(x[4:], params=part[0]), full[4:], atol=1e-6)  # an image's view needs only its row


# ---------------------------------------------------------------- defaults that feed a GPU
@pytest.fixture
def restore_backends(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # set by --deterministic; unset again afterwards
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
     precision, algorithms, warn_only) = saved
    torch.set_float32_matmul_precision(precision)
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)


def test_cuda_defaults_and_deterministic(restore_backends):
    cuda = torch.device("cuda")
    config = backends.configure(Config(dataset="imagenet100"), cuda)
    assert config.gpu_augment is True  # recorded resolved in config.json
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"  # TF32 for fp32 matmuls
    assert backends.configure(Config(dataset="imagenet100", gpu_augment=False), cuda).gpu_augment is False
    assert backends.configure(Config(dataset="cifar10"), cuda).gpu_augment is False  # in memory: always batched
    backends.configure(Config(dataset="imagenet100", deterministic=True), cuda)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
    assert torch.are_deterministic_algorithms_enabled()


def test_cpu_runs_keep_the_cpu_defaults(restore_backends):
    torch.backends.cudnn.benchmark = False
    config = backends.configure(Config(dataset="imagenet100"), torch.device("cpu"))
    assert config.gpu_augment is False and not torch.backends.cudnn.benchmark
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.parametrize("cores, processes, expected", [(16, "1", 15), (16, "4", 3), (2, "1", 1), (1, "2", 1),
                                                        (64, "1", 16)])
def test_auto_loader_workers_are_a_share_of_the_visible_cores(cores, processes, expected, monkeypatch):
    monkeypatch.setattr(backends, "visible_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    assert backends.default_num_workers("cuda") == expected
    assert backends.default_num_workers("cpu") == 0


def _images(root: Path, n: int = 8):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        path = root / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
        samples.append((str(path), i % 2))
    return samples


@pytest.mark.parametrize("gpu_augment", [True, False])
def test_folder_workers_ship_uint8_views_and_the_device_finishes_them(tmp_path, gpu_augment, monkeypatch):
    samples = _images(tmp_path)
    train_t, augment = imagenet_device_augment(16) if gpu_augment else (imagenet_train_transform(16), _normalise_views)
    data = FolderData("f", samples, samples, 2, train_t, imagenet_eval_transform(16), 16, num_workers=None,
                      device_augment=augment, device_normalize=normalise)
    with Image.open(samples[0][0]) as img:
        view = train_t(img.convert("RGB"))
    assert view.dtype == torch.uint8 and view.shape == (3, 16, 16)  # what a worker sends: a quarter of float32
    x1, x2, y, index = next(data.train_batches(4, 0, 0, "cpu"))
    assert x1.dtype == torch.float32 and x1.shape == (4, 3, 16, 16) and not torch.equal(x1, x2)
    assert -2.2 < float(x1.min()) and float(x1.max()) < 2.7  # ImageNet-normalised [0, 1]
    x, _ = next(data.eval_batches("test", 4, "cpu"))
    assert x.dtype == torch.float32 and -2.2 < float(x.min()) and float(x.max()) < 2.7
    assert data._loader("train", 4, "cpu").num_workers == 0  # auto on the CPU
    monkeypatch.setattr(backends, "visible_cores", lambda: 6)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pin_memory without a GPU
        assert data._loader("eval-test", 4, "cuda").num_workers == 5  # auto on CUDA (built, not started)
    data.close()


def test_in_memory_shards_augment_only_their_own_images():
    g = torch.Generator().manual_seed(0)
    split = ImageTensors(torch.randint(0, 256, (32, 3, 12, 12), dtype=torch.uint8, generator=g), torch.arange(32) % 4)
    data = InMemoryData("m", split, split, 4, [0.5] * 3, [0.25] * 3, augment=BatchAugment(12, grayscale_prob=0.3))
    seen = []
    original = data.augment.__class__.__call__
    data.augment.__class__.__call__ = lambda self, x, *a, **k: seen.append(x.shape[0]) or original(self, x, *a, **k)
    try:
        whole = next(data.train_batches(8, 0, 1, "cpu"))
        seen.clear()
        shard = next(data.train_batches(8, 0, 1, "cpu", rank=1, world_size=2))
    finally:
        data.augment.__class__.__call__ = original
    assert seen == [4, 4]  # two views of this process's 4 images, not of the global 8
    assert all(torch.allclose(w[4:].double(), s.double(), atol=1e-6) for w, s in zip(whole, shard))


def test_help_states_the_gpu_defaults():
    text = " ".join(_load("run_svi").parser().format_help().split())
    assert "--deterministic" in text and "TF32" in text and "cuDNN benchmark" in text
    assert "(default: auto)" in text and "--no-gpu-augment" in text
    assert "on CUDA this process's share of the visible cores" in text and "on with CUDA" in text


def test_cpu_model_names_the_first_processor_with_its_family_and_model(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 6\nmodel\t\t: 207\n"
                    "model name\t: Other\n")
    assert backends.cpu_model(str(info)) == "AMD EPYC (family 25 model 17)"
    info.write_text("processor\t: 0\nmodel name\t: Apple M2\n")  # no family/model lines: the name alone
    assert backends.cpu_model(str(info)) == "Apple M2"
    assert backends.cpu_model(str(tmp_path / "absent")) != ""  # off Linux: platform's name, never empty
