import dataclasses
import subprocess
from pathlib import Path

import pytest

from seesaw_repro import mmdet_plugin  # noqa: F401  (registers losses, hooks)
from seesaw_repro.data import synth
from seesaw_repro.paper import presets


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


def torchvision_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of torchvision's ImageNet ResNet-50/101 state dict, written out from
    torchvision's model (models/resnet.py: Bottleneck blocks, expansion 4, a 1000-way fc)
    independently of mmdet's ResNet, so a naming mismatch between the two shows."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(conv: str, bn: str, out: int, inp: int, k: int) -> None:
        shapes[f"{conv}.weight"] = (out, inp, k, k)
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{bn}.{field}"] = (out,)

    conv_bn("conv1", "bn1", 64, 3, 7)
    inplanes = 64
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    for layer, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True), 1):
        for block in range(count):
            p = f"layer{layer}.{block}"
            conv_bn(f"{p}.conv1", f"{p}.bn1", width, inplanes, 1)
            conv_bn(f"{p}.conv2", f"{p}.bn2", width, width, 3)
            conv_bn(f"{p}.conv3", f"{p}.bn3", 4 * width, width, 1)
            if block == 0:
                conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", 4 * width, inplanes, 1)
            inplanes = 4 * width
    shapes.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return shapes


def resnest200_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of open-mmlab://resnest200: a checkpoint converted for mmdet's own
    ResNeSt (its configs/resnest load it as is), so mmdet's ResNeSt-200 without DCN is the only
    source of its names here (the file itself cannot be downloaded in CI)."""
    from mmdet.registry import MODELS

    from seesaw_repro.paper.presets import RESNEST200_DCN

    config = {**RESNEST200_DCN, "dcn": None, "stage_with_dcn": (False,) * 4, "init_cfg": None}
    state = MODELS.build(config).state_dict()
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="session")
def _fake_pretrained_home(tmp_path_factory):
    import torch

    from seesaw_repro.data import pretrained

    home = tmp_path_factory.mktemp("torch-home")
    shapes = {
        "torchvision://resnet50": torchvision_resnet_shapes(50),
        "torchvision://resnet101": torchvision_resnet_shapes(101),
        "open-mmlab://resnest200": resnest200_shapes(),
    }
    generator = torch.Generator().manual_seed(0)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TORCH_HOME", str(home))
        for name, named_shapes in shapes.items():
            # small values (and running variances near 1) keep a forward pass finite
            state = {
                k: torch.rand(s, generator=generator) * 0.01 + k.endswith("running_var")
                for k, s in named_shapes.items()
            }
            path = pretrained.cache_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": state} if name.startswith("open-mmlab") else state, path)
    return home


@pytest.fixture(scope="session")
def lvis_shaped(tmp_path_factory):
    """The LVIS-shaped data of `seesaw data synth --lvis-shaped`, for smoke runs."""
    root = tmp_path_factory.mktemp("lvis-shaped")
    synth.generate_lvis_shaped(root)
    return root


@pytest.fixture
def pretrained_cache(_fake_pretrained_home, monkeypatch):
    """TORCH_HOME set to a cache holding the paper preset's three pretrained checkpoints, with
    random tensors under the real names and shapes (no network in tests)."""
    monkeypatch.setenv("TORCH_HOME", str(_fake_pretrained_home))
    return _fake_pretrained_home


@pytest.fixture
def small_disk(tmp_path):
    """A function that mounts (or resizes) a tmpfs of `size` bytes at one folder and returns
    it: a real file system that fills up. Skips where mount is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = False

    def mount(size: int) -> Path:
        nonlocal mounted
        options = f"{'remount,' if mounted else ''}size={size}"
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
        mounted = True
        return disk

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=True)
