"""The paper preset against mmdet's released Seesaw configs, field by field."""

import re

import pytest

from seesaw_repro.errors import UserError
from seesaw_repro.paper import configs, methods, presets

SHIPPED = sorted((presets.MMDET_CONFIGS / "seesaw_loss").glob("*.py"))


def _flat(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else key))
        return out
    if isinstance(value, list | tuple) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for index, item in enumerate(value):
            out.update(_flat(item, f"{prefix}[{index}]"))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


def _spec(config_name: str) -> methods.RunSpec:
    """The RunSpec of a Table 1 Seesaw row that a released config name describes."""
    match = re.fullmatch(
        r"(cascade-mask-rcnn|mask-rcnn)_(r50|r101)_fpn_seesaw-loss(-normed-mask)?_"
        r"(random|sample1e-3)-ms-2x_lvis-v1\.py",
        config_name,
    )
    assert match, config_name
    model, backbone, normed, sampler = match.groups()
    return methods.RunSpec(
        model=model.replace("-", "_"),
        backbone=backbone,
        norm_mask=bool(normed),
        sampler="random" if sampler == "random" else "rfs",
    )


def _listed_entry(key: str) -> str | None:
    """The PAPER_VS_MMDET entry that covers a flat key (stage indices ignored), if any."""
    key = re.sub(r"\[\d+\]", "", key)
    return next((k for k in presets.PAPER_VS_MMDET if key == k or key.startswith(k + ".")), None)


def test_paper_seesaw_rows_equal_mmdets_released_configs_but_for_the_listed_fields():
    assert len(SHIPPED) == 12  # Mask R-CNN R-50/101 and Cascade R-101, x sampler x norm mask
    used = set()
    for path in SHIPPED:
        theirs = _flat(presets.mmdet_config(f"seesaw_loss/{path.name}"))
        ours = _flat(configs.resolve(_spec(path.name), "paper"))
        differing = {k for k in set(theirs) | set(ours) if theirs.get(k, "-") != ours.get(k, "-")}
        unlisted = sorted(k for k in differing if _listed_entry(k) is None)
        assert not unlisted, (path.name, {k: (theirs.get(k), ours.get(k)) for k in unlisted})
        used |= {_listed_entry(k) for k in differing}
    assert used == set(presets.PAPER_VS_MMDET)  # no stale entry in the list


def test_paper_preset_needs_an_lvis_data_root(tmp_path):
    with pytest.raises(UserError, match="needs --data-root"):
        presets.PAPER.prepare_data(None, tmp_path)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "lvis_v1_train.json").write_text("{}")
    with pytest.raises(UserError, match="missing annotations/lvis_v1_val.json, train2017, val2017"):
        presets.PAPER.prepare_data(tmp_path, tmp_path)
    for folder in ("train2017", "val2017"):
        (tmp_path / folder).mkdir()
    (tmp_path / "annotations" / "lvis_v1_val.json").write_text('{"images": [{"id": 1}, {"i')
    with pytest.raises(UserError, match="lvis_v1_val.json is not a whole JSON object"):
        presets.PAPER.prepare_data(tmp_path, tmp_path)
    (tmp_path / "annotations" / "lvis_v1_val.json").write_text('{"images": []}\n')
    assert presets.PAPER.prepare_data(tmp_path, tmp_path) == tmp_path


def test_r101_cascade_and_schedules_follow_the_captions():
    config = configs.resolve(
        methods.RunSpec(model="cascade_mask_rcnn", backbone="r101", schedule="1x"), "paper"
    )
    assert config["model"]["backbone"]["depth"] == 101
    assert config["model"]["backbone"]["init_cfg"]["checkpoint"] == "torchvision://resnet101"
    assert config["train_cfg"]["max_epochs"] == 12
    assert config["param_scheduler"][1]["milestones"] == [8, 11]
    assert len(config["model"]["roi_head"]["bbox_head"]) == 3
    assert config["model"]["test_cfg"]["rcnn"]["max_per_img"] == 300
    assert config["train_dataloader"]["dataset"]["oversample_thr"] == 1e-3
