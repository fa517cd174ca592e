import dataclasses

import pytest

from seesaw_repro import mmdet_plugin, presets, synth  # noqa: F401  (registers losses, hooks)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny preset's dataset, generated once for the whole session."""
    root = tmp_path_factory.mktemp("tiny-lvis")
    synth.generate(root, presets.TINY.synth)
    return root


@pytest.fixture(scope="session")
def quick_preset():
    """The tiny preset with a short schedule and a small val split, for pipeline tests."""
    return dataclasses.replace(
        presets.TINY,
        name="quick",
        iters_2x=12,
        batch_size=2,
        synth=dataclasses.replace(presets.TINY.synth, num_val_images=30),
    )


@pytest.fixture(scope="session")
def quick_data(tmp_path_factory, quick_preset):
    root = tmp_path_factory.mktemp("quick-lvis")
    synth.generate(root, quick_preset.synth)
    return root


@pytest.fixture
def with_quick_preset(monkeypatch, quick_preset):
    monkeypatch.setitem(presets.PRESETS, quick_preset.name, quick_preset)
    return quick_preset


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, saying why, where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch sees none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
