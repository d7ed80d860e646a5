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


def test_a_cache_that_cannot_fit_is_refused_in_one_line_before_any_image_loads(scene, monkeypatch):
    """This rank's images in host memory, with the machine's available memory planted below what they
    take: one line naming the count, the bytes and what to change; nothing was read. With the memory
    there, the same images load."""
    from splatfacto_dist.data import image_cache
    from splatfacto_dist.data.datamanager import ConfigError
    from splatfacto_dist.launching import memcap

    dm, loaded = datamanager_as(0, 2, scene, monkeypatch, cache_images="cpu")
    owned = dm.schedule.owned_cameras()
    need = image_cache.cache_bytes([(64, 48)] * len(owned), dm.config.cache_images_type)
    monkeypatch.setattr(memcap, "host_budget", lambda: (need - 1, "the planted host memory"))
    with pytest.raises(ConfigError) as refused:
        dm.cached_train
    message = str(refused.value)
    assert "\n" not in message and f"the {len(owned)} training images this rank caches in host memory" in message
    assert "more ranks" in message and "cache-images cpu" not in message  # already in host memory
    assert loaded["train"] == []
    monkeypatch.setattr(memcap, "host_budget", lambda: (need, "the planted host memory"))
    assert sorted(dm.cached_train) == owned


def test_the_refusal_names_every_way_out_of_a_gpu_cache():
    from splatfacto_dist.data.image_cache import cache_bytes, cache_refusal

    need = cache_bytes([(3840, 2160)] * 75, "float32")  # 300 4K views on 4 ranks, as float32
    assert need == 75 * 3840 * 2160 * 3 * 4
    message = cache_refusal(75, need, "float32", True, (6 * 2**30, "the 6 GiB cap"))
    assert message.startswith("the 75 training images this rank caches on the GPU take 6.95 GiB (float32)")
    assert "cache-images-type uint8" in message and "cache-images cpu" in message and "more ranks" in message
    assert cache_refusal(75, cache_bytes([(3840, 2160)] * 75, "uint8"), "uint8", True, (6 * 2**30, "cap")) is None
    assert cache_refusal(75, need, "float32", True, None) is None  # nothing known: never refused
