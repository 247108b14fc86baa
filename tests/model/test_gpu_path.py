"""The GPU path, proven on the CPU (issue 19): the index copy per epoch, the device-memory budget, a trial's memory
freed before the next one, a GPU per local worker, the FM term in float32 under autocast, the model-size check
against the device, and the GPU compose file."""

from __future__ import annotations

import gc
import io
import weakref
from pathlib import Path

import optuna
import psutil
import pytest
import torch
import yaml

from deepfm_tuner.model import train as training
from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.model.data import tensors
from deepfm_tuner.model.deepfm import TRAINING_COPIES, fm_interaction
from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.pipeline import workers

from support import write_study

ROOT = Path(__file__).resolve().parents[2]
TINY_POLICY = PolicyConfig(embedding_dim=4, deep_hidden_units=(16, 8), dropout=0.0, learning_rate=0.01)
GB = 10**9


# -- 1. the epoch's permutation crosses to the device once, and the batch order is today's -----------------------
def counting_index_copies(monkeypatch) -> list[int]:
    """Sizes of the 1-D int64 tensors `.to()` is called on (row indices; the model's small index buffers aside)."""
    sizes: list[int] = []
    to = torch.Tensor.to

    def counted(self, *args, **kwargs):
        if self.dtype == torch.long and self.dim() == 1 and self.numel() > 100:
            sizes.append(self.numel())
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counted)
    return sizes


def test_training_copies_the_row_order_once_per_epoch_not_once_per_step(tiny_prepared, monkeypatch):
    control = TrainConfig(batch_size=128, max_epochs=2, patience=0, seed=5, device="cpu", threads=1)
    sizes = counting_index_copies(monkeypatch)
    training.train(tiny_prepared, TINY_POLICY, control)
    n = len(tiny_prepared.train)
    assert n > 10 * control.batch_size  # many steps per epoch, and not one index copy among them
    assert sizes == [n, n]


def test_a_block_shuffle_copies_each_block_once_in_the_same_order(monkeypatch):
    n, batch, block = 10_500, 256, 1000
    expected = list(training.epoch_batches(n, batch, torch.Generator().manual_seed(3), block))
    sizes = counting_index_copies(monkeypatch)
    batches = list(training.epoch_batches(n, batch, torch.Generator().manual_seed(3), block, device="cpu"))
    assert sorted(sizes) == sorted([block] * (n // block) + [n % block])
    assert all(torch.equal(a, b) for a, b in zip(batches, expected, strict=True))


def test_each_step_trains_on_the_rows_of_the_seeded_permutation(tiny_prepared, monkeypatch):
    """Same seed, same rows per step: epoch e trains on the e-th randperm of one generator seeded with the seed."""
    control = TrainConfig(batch_size=256, max_epochs=2, patience=0, seed=7, device="cpu", threads=1)
    seen = []
    rows = tensors.TensorData.rows

    def recording(self, index):
        seen.append(index.clone())
        return rows(self, index)

    monkeypatch.setattr(tensors.TensorData, "rows", recording)
    training.train(tiny_prepared, TINY_POLICY, control)
    generator = torch.Generator().manual_seed(control.seed)
    n = len(tiny_prepared.train)
    expected = [b for _ in range(2) for b in torch.randperm(n, generator=generator).split(control.batch_size)]
    assert len(seen) == len(expected) and all(torch.equal(a, b) for a, b in zip(seen, expected))


# -- 2. device memory: the allocator's reserved-but-unused blocks are this process's to use --------------------
def test_the_device_budget_counts_the_allocators_cached_blocks(monkeypatch):
    """A second trial: the first one's 60 GB are free in the caching allocator but the driver counts them as
    used; 20 GB of data fit (half of the 70 GB this process can allocate), where the driver's 10 GB said no."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GB, 141 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 60 * GB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.delenv(tensors.PROCESSES_PER_GPU_ENV, raising=False)
    budget = tensors.device_memory_budget("cuda")
    assert budget == 70 * GB
    assert training.device_placement(10**6, TINY_POLICY, 20 * GB, 1 * GB, budget, "cuda") == (True, True)
    monkeypatch.setenv(tensors.PROCESSES_PER_GPU_ENV, "2")  # two workers on this GPU: each its half of 141 GB
    assert tensors.device_memory_budget("cuda") == 70 * GB
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 5 * GB)  # held now: not free
    assert tensors.device_memory_budget("cuda") == 65 * GB


def test_memory_budget_arithmetic():
    assert tensors.memory_budget(free=10, total=100, reserved=30, allocated=20) == 20
    assert tensors.memory_budget(free=90, total=100, reserved=0, allocated=0, sharing=3) == 33
    assert tensors.memory_budget(free=5, total=100, reserved=40, allocated=40, sharing=2) == 5
    assert tensors.memory_budget(free=30, total=100, reserved=40, allocated=40, sharing=2) == 10
    assert tensors.memory_budget(free=0, total=100, reserved=60, allocated=60, sharing=2) == 0


def test_splits_go_to_the_device_only_with_room_left_after_the_training_state():
    parameters = 10**8  # 2 GB of training state (5 float32 copies)
    state = parameters * 4 * TRAINING_COPIES
    assert training.device_placement(parameters, TINY_POLICY, 3 * GB, 1 * GB, state + 8 * GB, "cuda") == (True, True)
    assert training.device_placement(parameters, TINY_POLICY, 5 * GB, 1 * GB, state + 8 * GB, "cuda") == (False, True)
    assert training.device_placement(parameters, TINY_POLICY, 3 * GB, 2 * GB, state + 6 * GB, "cuda") == (True, False)


# -- 3. a pruned or failed trial's model is freed before the next trial starts ----------------------------------
@pytest.mark.slow
def test_a_pruned_or_failed_trials_model_is_freed_before_the_next_trial(in_tmp, monkeypatch):
    """Trial 0 completes (the baseline), 1 is pruned, 2 diverges (fails), 3 completes. The collector is off, so
    nothing is freed by chance: when each trial builds its model, every earlier trial's model must be gone."""
    from deepfm_tuner.tuner.pipeline.tune import tune
    from deepfm_tuner.tuner.spec.study import load_study
    from deepfm_tuner.tuner.trials import objective

    # the tiny study, 3 trials of at most 2 epochs, pruned from the first report
    path = write_study(in_tmp, filename="s.yaml", study__n_trials=3, training__max_epochs=2,
                       study__pruner={"type": "median", "n_startup_trials": 0, "n_warmup_steps": 0})
    models: list[weakref.ref] = []
    alive_at_start: list[list[int]] = []
    build = training.build_model

    def recording(*args, **kwargs):
        alive_at_start.append([i for i, ref in enumerate(models) if ref() is not None])
        model = build(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    suggest = objective.suggest_policy

    def diverging_trial_2(trial, space):
        policy = suggest(trial, space)
        return PolicyConfig(**{**policy.to_dict(), "learning_rate": 1e12}) if trial.number == 2 else policy

    monkeypatch.setattr(training, "build_model", recording)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    monkeypatch.setattr(objective, "suggest_policy", diverging_trial_2)
    gc.collect()
    gc.disable()
    try:
        result = tune(load_study(path), summary=False)
    finally:
        gc.enable()
    assert [t.state.name for t in result.handle.study.trials] == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert alive_at_start == [[], [], [], []]


# -- 4. each local worker gets its own GPU ----------------------------------------------------------------------
@pytest.mark.parametrize("devices, expected", [
    (0, [{}, {}, {}, {}]),
    (1, [{"CUDA_VISIBLE_DEVICES": "0", "DEEPFM_PROCESSES_PER_GPU": "4"}] * 4),
    (2, [{"CUDA_VISIBLE_DEVICES": d, "DEEPFM_PROCESSES_PER_GPU": "2"} for d in "0101"]),
    (3, [{"CUDA_VISIBLE_DEVICES": d, "DEEPFM_PROCESSES_PER_GPU": n} for d, n in zip("0120", "2112")]),
])
def test_workers_get_gpus_round_robin(devices, expected):
    gpus = workers.visible_gpus({}, device_count=lambda: devices)
    assert [workers.gpu_env(i, 4, gpus) for i in range(4)] == expected


def test_an_existing_cuda_visible_devices_list_is_respected():
    assert workers.visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 5"}, device_count=lambda: 8) == ["3", "5"]
    assert workers.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-a1b2,GPU-c3d4"}) == ["GPU-a1b2", "GPU-c3d4"]
    assert workers.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, device_count=lambda: 8) == []
    assert workers.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,-1,3"}, device_count=lambda: 8) == ["2"]


@pytest.mark.parametrize("devices", [0, 1, 2, 3])
def test_start_workers_hands_each_process_its_gpu(devices, monkeypatch):
    environments = []

    class Process:
        def __init__(self, command, env, **kwargs):
            environments.append(env)
            self.stderr = io.BytesIO(b"")

    class Handle:
        storage_url, tracking_uri = "sqlite:///s.db", "sqlite:///m.db"

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(tensors.PROCESSES_PER_GPU_ENV, raising=False)
    monkeypatch.setattr(workers, "cuda_device_count", lambda: devices)
    monkeypatch.setattr(workers.subprocess, "Popen", Process)
    started = workers.start_workers(Handle(), "s.yaml", 3, 1, n_trials=None, timeout=None)
    for w in started:
        w.pump.join(timeout=5)
    assigned = [(env.get("CUDA_VISIBLE_DEVICES"), env.get(tensors.PROCESSES_PER_GPU_ENV)) for env in environments]
    assert assigned == {0: [(None, None)] * 3, 1: [("0", "3")] * 3, 2: [("0", "2"), ("1", "1"), ("0", "2")],
                        3: [("0", "1"), ("1", "1"), ("2", "1")]}[devices]
    assert all(env["DEEPFM_STORAGE"] == "sqlite:///s.db" for env in environments)


def test_the_gpu_compose_file_reserves_a_different_device_for_each_worker_service():
    services = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    reserved = [s["deploy"]["resources"]["reservations"]["devices"] for s in services.values()]
    ids = [device["device_ids"] for devices in reserved for device in devices]
    assert len(ids) == len(services) >= 2 and all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(ids)  # no two services on one GPU
    assert not any("count" in device for devices in reserved for device in devices)
    for name, service in services.items():
        assert service["image"] == "deepfm-tuner:gpu" and "TORCH_INDEX_URL" in service["build"]["args"]
        if name != "worker":  # one more worker: the base worker's command, environment and volumes
            assert service["extends"] == {"file": "docker-compose.yml", "service": "worker"}
            assert service["depends_on"] == {"init": {"condition": "service_completed_successfully"}}


# -- 6. the FM term in float32 under autocast; evaluation in float32 ---------------------------------------------
def old_fm_interaction(embeddings: torch.Tensor) -> torch.Tensor:
    """The formula before issue 19: under autocast, `vecdot` runs in bf16."""
    summed = embeddings.sum(dim=1)
    sum_of_squares = torch.linalg.vector_norm(embeddings.flatten(1), dim=1).square()
    return 0.5 * (torch.linalg.vecdot(summed, summed) - sum_of_squares)


def test_the_fm_term_is_float32_and_accurate_under_bf16_autocast():
    torch.manual_seed(0)
    embeddings = torch.randn(512, 39, 16) * 0.3  # Criteo's 39 fields, a trained model's scale
    reference = fm_interaction(embeddings.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        new = fm_interaction(embeddings)
        old = old_fm_interaction(embeddings)
        from_bf16 = fm_interaction(embeddings.bfloat16())  # inputs already rounded: the sum is still float32
    assert new.dtype == torch.float32 and from_bf16.dtype == torch.float32
    scale = reference.abs().mean()
    new_error = float((new.double() - reference).abs().max() / scale)
    old_error = float((old.double() - reference).abs().max() / scale)
    assert new_error < 1e-5
    assert old_error > 1e-2 and old_error > 1000 * new_error  # what bf16 did to the term


def test_evaluation_runs_in_float32_even_under_an_outer_autocast(tiny_prepared):
    model = training.build_model(tiny_prepared, TINY_POLICY)
    torch.nn.init.normal_(model.embedding.weight, std=0.3)
    fp32 = training.predict_logits(model, tiny_prepared.val)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = training.predict_logits(model, tiny_prepared.val)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, fp32)


# -- 7. the model-size check on a GPU run reads the device's memory, all copies counted ----------------------------
def test_a_model_too_large_for_the_device_is_a_one_line_config_error(monkeypatch):
    """Host memory is plenty (1 TB), the device's budget is 8 GB: a 10 GB training state is refused, naming the
    model's size, the device budget and the fix, before anything is allocated."""
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 1000 * GB})())
    parameters = 500_000_000  # x 4 bytes x 5 copies = 10 GB
    with pytest.raises(ConfigError) as error:
        training.device_placement(parameters, TINY_POLICY, 1 * GB, 1 * GB, 8 * GB, "cuda")
    message = str(error.value)
    assert "\n" not in message
    assert "500,000,000 parameters and needs about 10.0 GB to train" in message
    assert "but 8.0 GB of cuda memory is available" in message
    assert "use smaller deep_hidden_units or embedding_dim, or train on the CPU (training.device: cpu)" in message
    # the training rows count too: resident only beside the state, with room for activations (2 GB left here)
    assert training.device_placement(parameters, TINY_POLICY, 3 * GB, 1 * GB, 12 * GB, "cuda") == (False, True)


def test_a_gpu_run_checks_the_device_not_host_memory(tiny_prepared, monkeypatch):
    """`placement` on a CUDA device checks the device's budget (host memory plays no part); on the CPU it
    checks host memory and asks no device."""
    asked = []
    monkeypatch.setattr(training, "device_memory_budget", lambda device: asked.append(device) or 1000)
    with pytest.raises(ConfigError, match="GB of cuda:0 memory is available"):
        training.placement(tiny_prepared, TINY_POLICY, "cuda:0")
    assert asked == ["cuda:0"]
    assert training.placement(tiny_prepared, TINY_POLICY, "cpu") == (True, True) and asked == ["cuda:0"]
