"""The GPU pool of `launcher=local_gpus`: where its device ids come from, and lock files named
by device so that sweeps with different pools never share a GPU. (The sweep itself, with a
SIGKILLed job: tests/test_engines.py, slow.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from hw2.sweeps.gpu_slots import claim_gpu, gpu_pool


def test_pool_from_key_env_or_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_pool([0, 1]) == ["0", "1"]  # the key wins
    assert gpu_pool("4,5") == ["4", "5"]
    assert gpu_pool(3) == ["0", "1", "2"]
    assert gpu_pool(None) == ["2", "3"]  # else what the machine lets this process see
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_pool(None) == []  # nothing visible: claim_gpu then says what to set


def test_pool_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"gpu_pool=\['1', '1'\] names a device twice"):
        gpu_pool([1, 1])
    with pytest.raises(ValueError, match="gpu_pool=True"):
        gpu_pool(True)


def test_locks_are_per_physical_device(tmp_path: Path) -> None:
    """A sweep on devices [2, 3] and one on [3] share device 3's lock."""
    with claim_gpu(tmp_path, 1, names=["3"]) as first:  # a sweep whose pool is [3]
        assert first == 0 and (tmp_path / "gpu3.lock").read_text().strip().isdigit()
        with claim_gpu(tmp_path, 2, names=["3", "2"]) as second:  # a sweep on [3, 2]
            assert second == 1  # device 3 is taken by the first sweep: this job gets 2
        with claim_gpu(tmp_path, 2, names=["2", "3"]) as third:
            assert third == 0  # device 2 is free again (locks go by device, not by index)
    with pytest.raises(ValueError, match="needs at least one visible GPU: set gpu_pool"), \
            claim_gpu(tmp_path, 0):
        pass
