"""The ImageNet-pretrained backbones the paper preset starts from (torchvision://resnet50, ...):
their URLs, the cache the jobs read them from, fetching them beforehand, and loading them.

A config names a backbone's weights as mmdet's configs do (`init_cfg.checkpoint =
"torchvision://resnet50"`); mmengine would resolve the name with torchvision and download the
file at the start of every job. Here the names resolve through mmengine's own URL tables
(mmengine/hub/*.json, without torchvision), the files live where mmengine's downloads go
(torch.hub.get_dir()/checkpoints, so TORCH_HOME moves it), `seesaw weights fetch` fills that
cache on a machine with internet, and a job only ever reads it: a missing file stops the job
at once with the command that fetches it, never a download on a compute node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mmengine
import torch
from mmengine.runner.checkpoint import CheckpointLoader, get_external_models

from seesaw_repro.compat import load_from_local_safely
from seesaw_repro.errors import UserError

# The URL table of each scheme: mmengine's (torchvision's names as of its 0.12, the names
# mmdet's configs use; open-mmlab://, which MMENGINE_HOME/open_mmlab.json may extend).
SCHEMES = ("torchvision://", "open-mmlab://")


def _urls(scheme: str) -> dict[str, str]:
    if scheme == "torchvision://":
        table = Path(mmengine.__path__[0]) / "hub" / "torchvision_0.12.json"
        return json.loads(table.read_text())
    return get_external_models()


def url_of(name: str) -> str:
    """The download URL of a pretrained checkpoint name such as "torchvision://resnet50"."""
    for scheme in SCHEMES:
        if name.startswith(scheme):
            urls = _urls(scheme)
            model = name.removeprefix(scheme)
            if model not in urls:
                raise UserError(f"{name} is not a checkpoint mmengine knows ({scheme} names)")
            return urls[model]
    raise UserError(f"{name} is not a pretrained checkpoint name ({', '.join(SCHEMES)})")


def cache_dir() -> Path:
    """Where pretrained checkpoints are kept: torch hub's checkpoints folder (TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(name: str) -> Path:
    """The file a pretrained checkpoint name is read from (and fetched to)."""
    return cache_dir() / url_of(name).rsplit("/", 1)[-1]


def names_in(config: Any) -> set[str]:
    """The pretrained checkpoint names a config (or any nested value) refers to."""
    if isinstance(config, dict):
        return set().union(*(names_in(value) for value in config.values()))
    if isinstance(config, list | tuple):
        return set().union(*(names_in(value) for value in config))
    if isinstance(config, str) and config.startswith(SCHEMES):
        return {config}
    return set()


def missing(names: Iterable[str]) -> list[str]:
    """The names among `names` whose checkpoint is not in the cache, sorted."""
    return sorted(name for name in set(names) if not cache_path(name).is_file())


def require(names: Iterable[str], fetch_target: str = "all") -> None:
    """Stop with one line naming every checkpoint of `names` missing from the cache and the
    command that fetches them (for `fetch_target`, a table or "all")."""
    absent = missing(names)
    if absent:
        files = ", ".join(f"{cache_path(name)} ({name})" for name in absent)
        raise UserError(
            f"pretrained checkpoint(s) missing from the cache: {files}; fetch them with "
            f"`seesaw weights fetch {fetch_target} --preset paper` on a machine with internet "
            "(TORCH_HOME sets the cache; it must be the same for the jobs)"
        )


def fetch(name: str) -> Path:
    """Download a pretrained checkpoint into the cache unless it is there (checking the
    SHA-256 prefix its file name carries), then load it once as a job would; its path."""
    path = cache_path(name)
    if not path.is_file():
        url = url_of(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = re.search(r"-([a-f0-9]{8,})\.", path.name)
        try:  # torch.hub downloads to a temporary file and renames it: never a partial file
            torch.hub.download_url_to_file(url, str(path), digest and digest.group(1))
        except (OSError, RuntimeError) as err:  # no network, HTTP error, hash mismatch
            raise UserError(
                f"could not download {url} ({err}); where there is no internet, copy the file "
                f"to {path}"
            ) from None
    load_from_cache(name)
    return path


def load_from_cache(filename: str, map_location: Any = None) -> Any:
    """mmengine's loader for torchvision:// and open-mmlab:// names: the cached file, loaded
    as plain tensors (weights_only); never a download."""
    require([filename])
    return load_from_local_safely(str(cache_path(filename)), map_location)


# mmengine logs the loader's name after its first 10 characters ("load_from_"): "cache"
CheckpointLoader.register_scheme(prefixes=SCHEMES, loader=load_from_cache, force=True)
