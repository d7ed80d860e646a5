"""Each rank loads only its own images; eval images are split across ranks."""

from __future__ import annotations

import pytest
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

from splatfacto_dist import comm
from splatfacto_dist.data.datamanager import ShardedFullImageDatamanagerConfig


def datamanager_as(rank: int, world: int, scene, monkeypatch, **config):
    monkeypatch.setattr(comm, "rank", lambda: rank)
    monkeypatch.setattr(comm, "world_size", lambda: world)
    dm = ShardedFullImageDatamanagerConfig(dataparser=ColmapDataParserConfig(data=scene), **config).setup(device="cpu")
    loaded = {"train": [], "eval": []}
    for split, dataset in (("train", dm.train_dataset), ("eval", dm.eval_dataset)):
        get_data = dataset.get_data

        def recording(idx, image_type="float32", _get=get_data, _log=loaded[split]):
            _log.append(idx)
            return _get(idx, image_type=image_type)

        dataset.get_data = recording
    return dm, loaded


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_loads_only_its_share(scene, monkeypatch, world):
    train_seen, eval_seen = [], []
    for rank in range(world):
        dm, loaded = datamanager_as(rank, world, scene, monkeypatch)
        for step in range(3 * dm.schedule.steps_per_epoch):
            dm.next_train(step)
        dm.fixed_indices_eval_dataloader
        owned = dm.schedule.owned_cameras()
        assert sorted(loaded["train"]) == owned == sorted(dm.cached_train)
        assert sorted(loaded["eval"]) == dm.eval_indices
        train_seen += loaded["train"]
        eval_seen += loaded["eval"]
    assert sorted(train_seen) == list(range(len(dm.train_dataset)))
    assert sorted(eval_seen) == list(range(len(dm.eval_dataset)))


def test_batches_stack_same_size_images_with_their_cameras(scene, monkeypatch):
    dm, _ = datamanager_as(0, 1, scene, monkeypatch, cameras_per_rank=3)
    camera, batch = dm.next_train(0)
    assert camera.shape == (3,) and batch["image"].shape == (3, 48, 64, 3)
    indices = camera.metadata["cam_idx"]
    for i, idx in enumerate(indices):
        assert (batch["image"][i] == dm.cached_train[idx]["image"]).all()
    assert camera.metadata["image_size"] == (64, 48)
